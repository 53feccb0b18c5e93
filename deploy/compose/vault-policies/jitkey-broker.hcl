# What the jitkey broker's own Vault token may do. Nothing here reads secrets: secrets are
# read with the per-lease tokens the broker mints (see docs/vault.md).

# Mint per-lease orphan tokens (named after the jitkey lease id).
path "auth/token/create-orphan" {
  capabilities = ["update"]
}
# Find, renew and revoke them by accessor. Listing accessors is root-protected: sudo.
path "auth/token/accessors" {
  capabilities = ["list", "sudo"]
}
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}
path "auth/token/renew-accessor" {
  capabilities = ["update"]
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
# Renew, revoke and (orphan sweep) list and look up the dynamic leases jitkey created.
path "sys/leases/renew" {
  capabilities = ["update"]
}
path "sys/leases/revoke" {
  capabilities = ["update"]
}
path "sys/leases/lookup" {
  capabilities = ["update"]
}
path "sys/leases/lookup/database/creds/orders-readonly/*" {
  capabilities = ["list", "sudo"]
}
path "sys/leases/lookup/database/creds/orders-readonly" {
  capabilities = ["list", "sudo"]
}
