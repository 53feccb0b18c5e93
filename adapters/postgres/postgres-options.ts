import { z } from "zod";
import { SecretRef } from "../../broker/secret-ref.ts";
import { templateProblem } from "./grant-templates.ts";

/** A `postgres://` / `postgresql://` URL; the only connection string form, so host and database can be read from it. */
const ConnectionUrl = SecretRef.superRefine((value, ctx) => {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    // Never echo the value: it holds a password.
    ctx.addIssue({ code: "custom", message: "must be a postgres:// or postgresql:// URL" });
    return;
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
    ctx.addIssue({ code: "custom", message: "must be a postgres:// or postgresql:// URL" });
  }
});

const GrantTemplate = z
  .string()
  .max(16_384)
  .superRefine((template, ctx) => {
    const problem = templateProblem(template);
    if (problem) ctx.addIssue({ code: "custom", message: `grant template ${problem}` });
  });

/**
 * Resource `options` for the `postgres` adapter: one LOGIN role per lease, with the granted
 * scopes' SQL run in the same transaction that creates it.
 *
 * @example
 * ```yaml
 * options:
 *   connectionString: { env: JITKEY_ORDERS_DB_URL }   # a role that may CREATE ROLE
 *   host: orders-db.internal                          # what the agent connects to
 *   grants:
 *     read:
 *       - GRANT USAGE ON SCHEMA sales TO {{role}}
 *       - GRANT SELECT ON ALL TABLES IN SCHEMA sales TO {{role}}
 *     write:
 *       - GRANT orders_writers TO {{role}}
 * ```
 */
export const PostgresAdapterOptions = z
  .object({
    /**
     * The broker's own login: a role with CREATEROLE (and, on PostgreSQL 16+, ADMIN OPTION on
     * any group role the templates grant). The value, `{ env: NAME }` or `{ file: PATH }`.
     */
    connectionString: ConnectionUrl,
    /** Per scope, the SQL statements that grant it, each naming the role with `{{role}}`. */
    grants: z
      .record(z.string().min(1), z.array(GrantTemplate).min(1))
      .refine((grants) => Object.keys(grants).length > 0, "name at least one scope"),
    /** Host the agent connects to; default: the connection string's. */
    host: z.string().min(1).optional(),
    /** Port the agent connects to; default: the connection string's, else 5432. */
    port: z.number().int().min(1).max(65_535).optional(),
    /** Database the agent connects to; default: the connection string's. */
    database: z.string().min(1).optional(),
    /** Added to the agent's `url` as `?sslmode=`. */
    sslmode: z.enum(["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]).optional(),
    /** Per-lease role names are this prefix followed by the lease id. */
    rolePrefix: z
      .string()
      .regex(/^[a-z_][a-z0-9_]{0,15}$/, "lower-case letters, digits and _, at most 16")
      .default("jk_"),
    /** CONNECTION LIMIT of each per-lease role; default: unlimited. */
    connectionLimit: z.number().int().min(1).max(10_000).optional(),
    /** Who receives what a per-lease role owned when it is dropped; default: the broker's role. */
    reassignOwnedTo: z.string().min(1).max(63).optional(),
    /** Broker connections to the server. */
    poolSize: z.number().int().min(1).max(50).default(4),
    /** How long to wait for a connection; a timeout is a transient failure. */
    connectTimeoutMs: z.number().int().min(100).max(120_000).default(5_000),
    /** Server-side `statement_timeout` of the broker's statements; a timeout is a transient failure. */
    statementTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
  })
  .strict()
  .superRefine((options, ctx) => {
    let url: URL;
    try {
      url = new URL(options.connectionString);
    } catch {
      return; // reported on connectionString
    }
    if (!options.host && !url.hostname) {
      ctx.addIssue({
        code: "custom",
        path: ["host"],
        message: "required when the connection string names no host",
      });
    }
    if (!options.database && url.pathname.length <= 1) {
      ctx.addIssue({
        code: "custom",
        path: ["database"],
        message: "required when the connection string names no database",
      });
    }
  });

export type PostgresAdapterOptions = z.infer<typeof PostgresAdapterOptions>;
