# Held by the Vault tokens minted for the vault-kv-reader resource.
path "secret/data/demo/*" {
  capabilities = ["read"]
}
