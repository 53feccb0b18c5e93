import { createAwsAdapter } from "./aws/aws-adapter.ts";
import { createGcpAdapter } from "./gcp/gcp-adapter.ts";
import { createJwtAdapter } from "./jwt/jwt-adapter.ts";
import { createPostgresAdapter } from "./postgres/postgres-adapter.ts";
import type { AdapterFactory } from "./types.ts";
import { createVaultAdapter } from "./vault/vault-adapter.ts";

/**
 * Every adapter kind this build can run, by the name used in a resource's `adapter` field.
 * Adding a kind to {@link ADAPTER_KINDS} without a factory here fails to compile.
 */
export const ADAPTER_KINDS = ["jwt", "vault", "aws", "postgres", "gcp"] as const;
export type AdapterKind = (typeof ADAPTER_KINDS)[number];

export const adapterFactories: Record<AdapterKind, AdapterFactory> = {
  jwt: createJwtAdapter,
  vault: createVaultAdapter,
  aws: createAwsAdapter,
  postgres: createPostgresAdapter,
  gcp: createGcpAdapter,
};
