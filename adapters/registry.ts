import type { AdapterFactory } from "./types.ts";

/**
 * Every adapter kind this build can run, by the name used in a resource's `adapter` field.
 * Adding a kind to {@link ADAPTER_KINDS} without a loader here fails to compile.
 */
export const ADAPTER_KINDS = ["jwt", "vault", "aws", "postgres", "gcp"] as const;
export type AdapterKind = (typeof ADAPTER_KINDS)[number];

/**
 * How to load each kind's factory. Loaded only when a resource uses the kind: a broker with
 * only `jwt` resources never loads the cloud SDKs (about 0.6 s and 60 MB per process).
 */
export const adapterLoaders: Record<AdapterKind, () => Promise<AdapterFactory>> = {
  jwt: async () => (await import("./jwt/jwt-adapter.ts")).createJwtAdapter,
  vault: async () => (await import("./vault/vault-adapter.ts")).createVaultAdapter,
  aws: async () => (await import("./aws/aws-adapter.ts")).createAwsAdapter,
  postgres: async () => (await import("./postgres/postgres-adapter.ts")).createPostgresAdapter,
  gcp: async () => (await import("./gcp/gcp-adapter.ts")).createGcpAdapter,
};
