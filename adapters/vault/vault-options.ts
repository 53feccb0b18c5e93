import { z } from "zod";
import { SecretRef } from "../../broker/secret-ref.ts";

/** How the broker itself logs in to Vault. */
const AppRoleLogin = z
  .object({
    roleId: z.string().min(1),
    /** The secret id: the value, `{ env: NAME }` or `{ file: PATH }`. */
    secretId: SecretRef,
    /** Where the AppRole auth method is mounted; default `approle`. */
    mountPath: z.string().min(1).default("approle"),
  })
  .strict();

/** A Vault path without leading or trailing slashes, e.g. `database/creds/readonly`. */
const VaultPath = z
  .string()
  .min(1)
  .transform((path) => path.replace(/^\/+|\/+$/g, ""))
  .refine((path) => path.length > 0 && !path.includes("//") && !path.includes(".."), "must be a Vault path");

/**
 * Resource `options` for the `vault` adapter (HashiCorp Vault or OpenBao).
 *
 * @example
 * ```yaml
 * options:
 *   address: http://vault:8200
 *   appRole: { roleId: "...", secretId: { file: /run/secrets/vault-secret-id } }
 *   mode: dynamic
 *   path: database/creds/readonly
 *   wrapTtlSeconds: 120
 * ```
 */
export const VaultAdapterOptions = z
  .object({
    /** Vault's base URL, e.g. `https://vault.example:8200`. */
    address: z.url({ protocol: /^https?$/ }),
    /**
     * A static token for the broker: the value, `{ env: NAME }` or `{ file: PATH }`.
     * Exactly one of `token` and `appRole`.
     */
    token: SecretRef.optional(),
    /** AppRole credentials; the broker logs in, renews its token and logs in again as needed. */
    appRole: AppRoleLogin.optional(),
    /** Vault Enterprise / OpenBao namespace, sent as `X-Vault-Namespace` on every request. */
    namespace: z.string().min(1).optional(),
    /** `dynamic`: read a leased secrets-engine path; `token`: mint a Vault token. */
    mode: z.enum(["dynamic", "token"]),
    /** dynamic: the leased path to read, e.g. `database/creds/readonly`. */
    path: VaultPath.optional(),
    /**
     * token: the policies of the minted token (required).
     * dynamic: the policies of the per-lease token that reads `path` (default: the broker's own).
     */
    policies: z.array(z.string().min(1)).min(1).optional(),
    /** Leave Vault's `default` policy off minted tokens. */
    noDefaultPolicy: z.boolean().default(false),
    /** Response-wrap the credential: the agent receives a single-use wrapping token instead. */
    wrapTtlSeconds: z.number().int().min(1).max(86_400).optional(),
    /**
     * dynamic: lease prefixes the orphan sweep may revoke from (default: `path`). Every lease
     * under them is assumed to be jitkey's: point them only at paths dedicated to jitkey.
     */
    sweepPrefixes: z.array(VaultPath).optional(),
    /** Per-request timeout; a timeout is a transient failure. */
    requestTimeoutMs: z.number().int().min(50).max(120_000).default(10_000),
    /** How many token lookups run at once when searching tokens by lease id. */
    lookupConcurrency: z.number().int().min(1).max(64).default(8),
  })
  .strict()
  .superRefine((options, ctx) => {
    if ((options.token === undefined) === (options.appRole === undefined)) {
      ctx.addIssue({ code: "custom", path: ["token"], message: "set exactly one of token and appRole" });
    }
    if (options.mode === "dynamic" && !options.path) {
      ctx.addIssue({ code: "custom", path: ["path"], message: "required when mode is dynamic" });
    }
    if (options.mode === "token" && !options.policies) {
      ctx.addIssue({ code: "custom", path: ["policies"], message: "required when mode is token" });
    }
    if (options.mode === "token" && options.path) {
      ctx.addIssue({ code: "custom", path: ["path"], message: "only used when mode is dynamic" });
    }
    if (options.mode === "token" && options.sweepPrefixes) {
      ctx.addIssue({ code: "custom", path: ["sweepPrefixes"], message: "only used when mode is dynamic" });
    }
  });

export type VaultAdapterOptions = z.infer<typeof VaultAdapterOptions>;
