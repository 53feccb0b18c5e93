#!/bin/sh
# One-shot setup of the dev-mode Vault in compose.yaml for jitkey. Idempotent: safe to re-run.
# DEMO VALUES: the AppRole role/secret ids and the PostgreSQL password are published in this
# repository (they match deploy/compose/jitkey.yaml and postgres-init.sql).
set -eu

export VAULT_ADDR="${VAULT_ADDR:-http://vault:8200}"
: "${VAULT_TOKEN:?VAULT_TOKEN (the dev root token) must be set}"

until vault status >/dev/null 2>&1; do
  echo "vault-init: waiting for Vault at $VAULT_ADDR"
  sleep 1
done

# --- database secrets engine against the compose PostgreSQL ---------------------------------
vault secrets list -format=json | grep -q '"database/"' || vault secrets enable database

# Keep the whole token display name ("token-lse-…", i.e. the jitkey lease id) in the
# username: Vault's default template truncates it to 8 characters, which would lose the lease
# id that crash recovery and audits match on. 2 + 40 + 1 + 8 + 1 + 8 ≤ 63 (PostgreSQL's limit).
vault write database/config/orders \
  plugin_name=postgresql-database-plugin \
  connection_url='postgresql://{{username}}:{{password}}@postgres:5432/app?sslmode=disable' \
  username=vault \
  password=vault-demo-password \
  allowed_roles=orders-readonly \
  username_template='{{ printf "v-%s-%s-%s" (.DisplayName | truncate 40) (.RoleName | truncate 8) (random 8) | truncate 63 }}'

vault write database/roles/orders-readonly \
  db_name=orders \
  creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE orders_readers;" \
  revocation_statements="REVOKE orders_readers FROM \"{{name}}\"; DROP ROLE IF EXISTS \"{{name}}\";" \
  default_ttl=15m \
  max_ttl=1h

# --- a KV secret for the token-mode demo resource ---------------------------------------------
vault kv put secret/demo/greeting message="hello from Vault, via a jitkey lease" >/dev/null

# --- policies ---------------------------------------------------------------------------------
vault policy write jitkey-broker /vault-policies/jitkey-broker.hcl
vault policy write jitkey-db-orders-readonly /vault-policies/jitkey-db-orders-readonly.hcl
vault policy write jitkey-kv-demo-reader /vault-policies/jitkey-kv-demo-reader.hcl

# --- AppRole login for the broker ---------------------------------------------------------------
vault auth list -format=json | grep -q '"approle/"' || vault auth enable approle
# The broker's token holds the policies it hands to per-lease tokens: Vault lets a token mint
# children only with a subset of its own policies (no sudo on auth/token/create needed).
vault write auth/approle/role/jitkey-broker \
  token_policies=jitkey-broker,jitkey-db-orders-readonly,jitkey-kv-demo-reader \
  token_ttl=1h \
  token_max_ttl=4h \
  secret_id_ttl=0
vault write auth/approle/role/jitkey-broker/role-id role_id=jitkey-broker-demo-role-id
# custom-secret-id refuses an id that already exists (a re-run); then make sure it does exist.
if ! vault write auth/approle/role/jitkey-broker/custom-secret-id secret_id=jitkey-broker-demo-secret-id >/dev/null 2>&1; then
  vault write auth/approle/role/jitkey-broker/secret-id/lookup secret_id=jitkey-broker-demo-secret-id >/dev/null
fi

echo "vault-init: done"
