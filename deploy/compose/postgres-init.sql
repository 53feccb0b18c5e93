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

-- The login jitkey's own `postgres` adapter uses (resource orders-db-direct in jitkey.yaml):
-- it creates one LOGIN role per lease and drops it when the lease ends.
-- DEMO PASSWORD: it matches JITKEY_ORDERS_DB_URL in compose.yaml; change both outside a demo.
CREATE ROLE jitkey WITH LOGIN CREATEROLE PASSWORD 'jitkey-demo-password';
-- The read scope grants membership of orders_readers; PostgreSQL 16+ wants ADMIN OPTION for that.
GRANT orders_readers TO jitkey WITH ADMIN OPTION;
-- The write scope grants these directly; the broker may only hand out what it holds WITH GRANT OPTION.
GRANT SELECT, INSERT ON orders TO jitkey WITH GRANT OPTION;
GRANT USAGE ON SEQUENCE orders_id_seq TO jitkey WITH GRANT OPTION;
