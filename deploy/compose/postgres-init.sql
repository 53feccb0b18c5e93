-- Demo database for the compose stack. Runs once, when the postgres volume is created.
-- DEMO PASSWORD for Vault's management login: change it (and vault-init.sh) outside a demo.

-- The login Vault's database secrets engine uses to create and drop per-lease roles.
CREATE ROLE vault WITH LOGIN CREATEROLE PASSWORD 'vault-demo-password';

-- Per-lease roles become members of this group and read through it.
CREATE ROLE orders_readers NOLOGIN;
-- Since PostgreSQL 16 a CREATEROLE role may only grant memberships it holds with ADMIN OPTION.
GRANT orders_readers TO vault WITH ADMIN OPTION;

CREATE TABLE orders (
  id serial PRIMARY KEY,
  customer text NOT NULL,
  total_cents integer NOT NULL,
  placed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orders (customer, total_cents) VALUES ('acme', 12900), ('globex', 4500), ('initech', 31000);
GRANT SELECT ON orders TO orders_readers;
