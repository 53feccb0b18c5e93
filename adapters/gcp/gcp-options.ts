import { z } from "zod";
import { SecretRef } from "../../broker/secret-ref.ts";

/** GCP's own ceiling for `generateAccessToken` with the lifetime-extension org policy (12 h). */
export const GCP_MAX_LIFETIME_SECONDS = 43_200;

/** GCP's ceiling without the org policy (1 h). */
export const GCP_DEFAULT_MAX_LIFETIME_SECONDS = 3_600;

/** STS accepts at most this many rules in one Credential Access Boundary. */
export const MAX_ACCESS_BOUNDARY_RULES = 10;

/** A service account email, or its numeric unique id. */
const ServiceAccountId = z
  .string()
  .regex(/^([^\s@/]+@[^\s@/]+|\d{6,})$/, "a service account email or numeric unique id");

const OAuthScope = z
  .string()
  .regex(/^\S+$/, "an OAuth scope, e.g. https://www.googleapis.com/auth/cloud-platform");

/** One Credential Access Boundary rule, as STS takes it. */
const AccessBoundaryRule = z
  .object({
    /** e.g. `//storage.googleapis.com/projects/_/buckets/reports` */
    availableResource: z
      .string()
      .regex(/^\/\/\S+$/, "a full resource name, e.g. //storage.googleapis.com/projects/_/buckets/b"),
    /** Roles the token may use on it, each as `inRole:<role>`. */
    availablePermissions: z.array(z.string().regex(/^inRole:\S+$/, "inRole:<role>")).min(1),
    /** An optional CEL condition narrowing the rule further. */
    availabilityCondition: z
      .object({
        expression: z.string().min(1),
        title: z.string().min(1).optional(),
        description: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

export type AccessBoundaryRule = z.infer<typeof AccessBoundaryRule>;

/** What one jitkey scope maps to: OAuth scopes, and optionally a Credential Access Boundary. */
const ScopeGrant = z
  .union([
    z.array(OAuthScope).min(1),
    z
      .object({
        oauthScopes: z.array(OAuthScope).min(1),
        accessBoundary: z.array(AccessBoundaryRule).min(1).max(MAX_ACCESS_BOUNDARY_RULES).optional(),
      })
      .strict(),
  ])
  .transform((grant) => (Array.isArray(grant) ? { oauthScopes: grant } : grant));

export type ScopeGrant = z.infer<typeof ScopeGrant>;

/** `https://host[:port]`, `http://host:port` (a fake, a proxy) or a bare host name. */
const Endpoint = z.string().superRefine((value, ctx) => {
  try {
    const url = new URL(value.includes("://") ? value : `https://${value}`);
    if (url.protocol !== "https:" && url.protocol !== "http:") throw new Error("protocol");
    if (url.pathname !== "/" || url.search || url.username) throw new Error("extra parts");
  } catch {
    ctx.addIssue({ code: "custom", message: "must be a host name or an http(s)://host[:port] URL" });
  }
});

/** A service-account key or other google-auth-library credentials JSON, from a secret reference. */
const CredentialsJson = SecretRef.transform((text, ctx) => {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    ctx.addIssue({ code: "custom", message: "must be a credentials JSON document" });
    return z.NEVER;
  }
  if (
    typeof parsed !== "object" ||
    parsed === null ||
    typeof (parsed as { type?: unknown }).type !== "string"
  ) {
    ctx.addIssue({ code: "custom", message: "must be a credentials JSON object with a type" });
    return z.NEVER;
  }
  return parsed as Record<string, unknown>;
});

/**
 * Resource `options` for the `gcp` adapter: short-lived OAuth access tokens for one service
 * account, from the IAM Service Account Credentials API.
 *
 * @example
 * ```yaml
 * options:
 *   serviceAccount: reports-reader@acme-prod.iam.gserviceaccount.com
 *   scopes:
 *     read: [https://www.googleapis.com/auth/devstorage.read_only]
 *     read-2024:
 *       oauthScopes: [https://www.googleapis.com/auth/devstorage.read_only]
 *       accessBoundary:
 *         - availableResource: //storage.googleapis.com/projects/_/buckets/acme-reports
 *           availablePermissions: [inRole:roles/storage.objectViewer]
 * ```
 */
export const GcpAdapterOptions = z
  .object({
    /** The service account whose tokens the agent gets (the broker needs Token Creator on it). */
    serviceAccount: ServiceAccountId,
    /** A delegation chain, each needing Token Creator on the next, the last on `serviceAccount`. */
    delegates: z.array(ServiceAccountId).min(1).optional(),
    /** Per jitkey scope: OAuth scopes, or `{ oauthScopes, accessBoundary }`. */
    scopes: z
      .record(z.string().min(1), ScopeGrant)
      .refine((scopes) => Object.keys(scopes).length > 0, "name at least one scope"),
    /** The IAM Credentials API endpoint; default `https://iamcredentials.googleapis.com`. */
    apiEndpoint: Endpoint.optional(),
    /** The STS token-exchange URL used for access boundaries. */
    stsEndpoint: z.url({ protocol: /^https?$/ }).default("https://sts.googleapis.com/v1/token"),
    /**
     * The broker's own Google credentials (service-account key JSON): the value, `{ env: NAME }`
     * or `{ file: PATH }`. Default: Application Default Credentials.
     */
    credentials: CredentialsJson.optional(),
    /**
     * The longest token handed out; leases are capped to it. Above 3600 needs the
     * `iam.allowServiceAccountCredentialLifetimeExtension` org policy for `serviceAccount`.
     */
    maxTtlSeconds: z.number().int().min(1).max(GCP_MAX_LIFETIME_SECONDS).default(600),
    /** Per request to Google; a timeout is a transient failure. */
    requestTimeoutMs: z.number().int().min(100).max(120_000).default(10_000),
  })
  .strict()
  .superRefine((options, ctx) => {
    // Rules of several granted scopes are merged into one boundary; keep every union within STS's limit.
    const rules = new Set(
      Object.values(options.scopes).flatMap((grant) =>
        (grant.accessBoundary ?? []).map((rule) => JSON.stringify(rule)),
      ),
    );
    if (rules.size > MAX_ACCESS_BOUNDARY_RULES) {
      ctx.addIssue({
        code: "custom",
        path: ["scopes"],
        message: `at most ${MAX_ACCESS_BOUNDARY_RULES} distinct access boundary rules across all scopes (STS limit)`,
      });
    }
  });

export type GcpAdapterOptions = z.infer<typeof GcpAdapterOptions>;

/** Host, port and protocol for the IAM Credentials client, from `apiEndpoint`. */
export function iamEndpoint(apiEndpoint: string | undefined): {
  apiEndpoint: string;
  port: number;
  protocol: "http" | "https";
} {
  const url = new URL(
    apiEndpoint
      ? apiEndpoint.includes("://")
        ? apiEndpoint
        : `https://${apiEndpoint}`
      : "https://iamcredentials.googleapis.com",
  );
  const protocol = url.protocol === "http:" ? "http" : "https";
  return {
    apiEndpoint: url.hostname,
    port: url.port ? Number(url.port) : protocol === "http" ? 80 : 443,
    protocol,
  };
}
