# Held by the per-lease tokens of the orders-db resources: read one set of credentials.
path "database/creds/orders-readonly" {
  capabilities = ["read"]
}
