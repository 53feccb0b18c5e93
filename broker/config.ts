import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { SIGNING_ALGORITHMS } from "../adapters/jwt/signing-keys.ts";
import { ADAPTER_KINDS } from "../adapters/registry.ts";
import { SHARD_COUNTS } from "./ids.ts";
import { SecretRef } from "./secret-ref.ts";

/** Data classifications, lowest first. */
export const CLASSIFICATIONS = ["public", "internal", "confidential", "restricted"] as const;
export type Classification = (typeof CLASSIFICATIONS)[number];

const name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "letters, digits, . _ - (max 64)");
const sha256Hex = z
  .string()
  .regex(/^[0-9a-fA-F]{64}$/, "64 hex characters (sha256)")
  .transform((s) => s.toLowerCase());
const scope = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9:._/-]{0,127}$/, "a scope token");
const seconds = z.number().int().positive();

/** Hosts that never leave the machine: the only ones a JWKS may be fetched from over plain http. */
function isLoopbackHost(hostname: string): boolean {
  const host = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  return host === "localhost" || host === "::1" || /^127(\.\d{1,3}){3}$/.test(host);
}

/**
 * Where an issuer's public keys come from. Whoever can change that answer can forge agents, so
 * it must be https; plain http only to this machine (a local test issuer or a sidecar).
 */
const jwksUri = z.url().refine(
  (value) => {
    if (!URL.canParse(value)) return false;
    const url = new URL(value);
    return url.protocol === "https:" || (url.protocol === "http:" && isLoopbackHost(url.hostname));
  },
  { message: "must be an https: URL (plain http: only for a loopback address)" },
);

const issuerSchema = z
  .object({
    name,
    issuer: z.string().min(1),
    jwksUri: jwksUri.optional(),
    jwks: z.object({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }).optional(),
    agentIdClaim: z.string().min(1).default("sub"),
    owner: z.string().optional(),
  })
  .refine((i) => (i.jwksUri === undefined) !== (i.jwks === undefined), {
    message: "set exactly one of jwksUri or jwks",
  });

const principalSchema = z.object({ name, tokenSha256: sha256Hex });

const introspectorSchema = principalSchema.extend({
  /** When set, credentials of other resources answer `active: false` to this introspector. */
  resources: z.array(name).min(1).optional(),
});

/** A browser origin allowed to call the API (`https://console.example.com`): scheme, host, port. */
const origin = z
  .url()
  .refine((value) => URL.canParse(value) && new URL(value).origin === value.replace(/\/$/, ""), {
    message: "an origin: scheme://host[:port] with no path",
  });

const resourceSchema = z.object({
  name,
  adapter: z.enum(ADAPTER_KINDS),
  classification: z.enum(CLASSIFICATIONS),
  scopes: z.array(scope).min(1),
  maxTtlSeconds: seconds.max(86_400),
  options: z.record(z.string(), z.unknown()).default({}),
  owner: z.string().optional(),
  description: z.string().optional(),
  /** Free labels policies may test (`resource.tags.contains("pii")` in Cedar). */
  tags: z.array(z.string().min(1).max(64)).max(32).optional(),
});

/** An identity claim name policies may test; also a Cedar record attribute name. */
const claimName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$/, "a claim name (max 64)");
/** A claim value pattern: exact, or with `*` matching any run of characters. */
const claimPattern = z.string().min(1).max(256);

/** The claim types `.cedar` policies can see; YAML `claims:` conditions default to `string`. */
export const CLAIM_TYPES = ["string", "string[]", "number", "boolean"] as const;
export type ClaimType = (typeof CLAIM_TYPES)[number];

const policySchema = z.object({
  name: z.string().optional(),
  agents: z.array(z.string().min(1)).min(1),
  resources: z.array(name).min(1),
  scopes: z.array(scope).min(1),
  maxClassification: z.enum(CLASSIFICATIONS),
  autoApprove: z.boolean().default(false),
  maxTtlSeconds: seconds.max(86_400),
  owner: z.string().optional(),
  /**
   * Identity claims the agent must carry for the rule to apply: each value is a pattern or a
   * list of patterns (any of them), `*` matching any run of characters.
   */
  claims: z.record(claimName, z.union([claimPattern, z.array(claimPattern).min(1).max(32)])).optional(),
});

/** A `redis://` or `rediss://` URL. */
const redisUrl = z
  .string()
  .refine((value) => URL.canParse(value) && /^rediss?:$/.test(new URL(value).protocol), {
    message: "a redis:// or rediss:// URL",
  });

/** Reads a PEM file when the config is parsed, so a missing file fails start-up naming the field. */
const pemFile = z
  .string()
  .min(1)
  .transform((path, ctx) => {
    try {
      return readFileSync(path, "utf8");
    } catch (error) {
      ctx.addIssue({
        code: "custom",
        message: `cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? "error"}`,
      });
      return z.NEVER;
    }
  });

/**
 * TLS to Redis. Certificates are always verified; `caFile` adds a private CA. The files are
 * read when the config is parsed: the parsed config holds their PEM text under the same names.
 */
const redisTls = z
  .object({
    /** PEM file of the CA certificate(s) the servers' certificates chain to; default: the system's. */
    caFile: pemFile.optional(),
    /** Client certificate and key (PEM files), when the servers require one. */
    certFile: pemFile.optional(),
    keyFile: pemFile.optional(),
    /** Name the servers' certificates carry, when it is not the host connected to. */
    servername: z.string().min(1).optional(),
  })
  .strict()
  .refine((tls) => (tls.certFile === undefined) === (tls.keyFile === undefined), {
    message: "set both certFile and keyFile, or neither",
  });

const redisCluster = z
  .object({
    /** `redis://host:port` (or `rediss://`) of one or more nodes; credentials go in redis.username/password. */
    nodes: z
      .array(
        redisUrl.refine((value) => {
          const url = new URL(value);
          return !url.username && !url.password && (url.pathname === "" || url.pathname === "/");
        }, "host and port only: credentials go in redis.username/password, and a cluster has only db 0"),
      )
      .min(1),
  })
  .strict();

const redisSentinel = z
  .object({
    /** Sentinels to ask where the master is. */
    sentinels: z
      .array(z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65_535) }).strict())
      .min(1),
    /** The master's name in the sentinels' configuration. */
    name: z.string().min(1),
    /** ACL user and password of the sentinels themselves (redis.username/password are the master's). */
    username: z.string().min(1).optional(),
    password: SecretRef.optional(),
    /** The sentinels speak TLS too (with redis.tls's settings). */
    tls: z.boolean().optional(),
    db: z.number().int().min(0).optional(),
  })
  .strict();

/** At most one way to reach Redis, and TLS and credentials said once. */
function checkRedisConnection(
  redis: {
    url?: string;
    cluster?: { nodes: string[] };
    sentinel?: { tls?: boolean };
    password?: string;
    tls?: unknown;
  },
  ctx: z.RefinementCtx,
): void {
  const forms = (["url", "cluster", "sentinel"] as const).filter((form) => redis[form] !== undefined);
  if (forms.length > 1)
    ctx.addIssue({
      code: "custom",
      path: [forms[1] as string],
      message: `set only one of redis.url, redis.cluster and redis.sentinel (REDIS_URL sets redis.url); got ${forms.join(" and ")}`,
    });
  const urls = redis.url ? [redis.url] : (redis.cluster?.nodes ?? []);
  const schemes = new Set(urls.map((url) => new URL(url).protocol));
  if (schemes.size > 1)
    ctx.addIssue({
      code: "custom",
      path: ["cluster", "nodes"],
      message: "all nodes redis://, or all rediss://",
    });
  if (redis.tls !== undefined && schemes.has("redis:"))
    ctx.addIssue({ code: "custom", path: ["tls"], message: "TLS settings need rediss:// URLs" });
  if (redis.sentinel?.tls && redis.tls === undefined)
    ctx.addIssue({
      code: "custom",
      path: ["sentinel", "tls"],
      message: "needs redis.tls (use {} for the defaults)",
    });
  if (redis.password !== undefined && redis.url && new URL(redis.url).password)
    ctx.addIssue({ code: "custom", path: ["password"], message: "the url already holds a password" });
}

/** Events clients can wait for, stream (`GET /v1/events`) and receive by webhook. */
export const NOTIFICATION_EVENTS = [
  "task_pending",
  "task_approved",
  "task_denied",
  "task_completed",
  "task_expired",
  "task_revoked",
  "lease_revoked",
  "lease_revoke_failed",
] as const;
export type NotificationEvent = (typeof NOTIFICATION_EVENTS)[number];

const webhookSchema = z
  .object({
    name,
    /** Where events are POSTed; `https:`, or `http:` to a loopback address only. */
    url: z.url({ protocol: /^https?$/ }).refine((url) => {
      const parsed = new URL(url);
      return parsed.protocol === "https:" || ["127.0.0.1", "localhost", "[::1]"].includes(parsed.hostname);
    }, "must be https (http only to a loopback address)"),
    events: z.array(z.enum(NOTIFICATION_EVENTS)).min(1),
    /**
     * The Standard Webhooks signing secret (`whsec_` + base64, at least 24 bytes): the value,
     * `{ env: NAME }` or `{ file: PATH }`.
     */
    secret: SecretRef.refine((secret) => {
      const bytes = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
      return secret.startsWith("whsec_") && bytes.length >= 24;
    }, "a whsec_ secret of at least 24 bytes (base64)"),
    /** `standard`: the event as JSON; `slack`: a Slack incoming-webhook `{text}` message. */
    format: z.enum(["standard", "slack"]).default("standard"),
  })
  .strict();

/** The one configuration schema. Parsed once at start; a bad file fails naming the field. */
export const ConfigSchema = z
  .object({
    http: z
      .object({
        port: z.number().int().min(0).max(65_535).default(8080),
        host: z.string().default("127.0.0.1"),
        /** The broker's public base URL: `iss` of its credentials; default http://host:port. */
        publicUrl: z.url().optional(),
        /**
         * Express `trust proxy`: false, a hop count, or addresses/CIDRs of trusted proxies
         * ("loopback, 10.0.0.0/8"). `true` would trust any X-Forwarded-For a client sends.
         */
        trustProxy: z
          .union([z.literal(false), z.number().int().min(1).max(10), z.string().min(1)])
          .default(false),
        /** Browser origins allowed to call the API. No entry, no CORS headers at all. */
        cors: z.object({ origins: z.array(origin).min(1) }).optional(),
      })
      .prefault({}),
    redis: z
      .object({
        /**
         * One Redis (`redis://`, or `rediss://` for TLS). Set at most one of url, cluster and
         * sentinel; none ⇒ `jitkey` runs a private redis-server under the data directory.
         */
        url: redisUrl.optional(),
        /** A Redis Cluster: some of its nodes; the rest are discovered. */
        cluster: redisCluster.optional(),
        /** A master found through Redis Sentinel. */
        sentinel: redisSentinel.optional(),
        /** ACL user of the data nodes (all three forms). */
        username: z.string().min(1).optional(),
        /** Password of the data nodes: the value, `{ env: NAME }` or `{ file: PATH }`. */
        password: SecretRef.optional(),
        /** TLS to the data nodes; on with this block or a `rediss://` URL. */
        tls: redisTls.optional(),
        prefix: z
          .string()
          .regex(/^[A-Za-z0-9:_-]+$/)
          .default("jitkey"),
        /**
         * Storage shards (one Redis Cluster hash slot each): 1, 2, 4, 8, 16, 32 or 64. Fixed for
         * the life of the data; a broker refuses to start against data written with another count.
         */
        shards: z
          .number()
          .int()
          .refine((n) => (SHARD_COUNTS as readonly number[]).includes(n), "one of 1, 2, 4, 8, 16, 32, 64")
          .default(16),
      })
      .superRefine(checkRedisConnection)
      .prefault({}),
    data: z.object({ dir: z.string().default(".jitkey") }).prefault({}),
    signing: z
      .object({
        keyFile: z.string().optional(),
        pemAlgorithm: z.enum(SIGNING_ALGORITHMS).default("ES256"),
        /** How long a broker's public keys stay published after it was last seen (longer than any lease). */
        publishedKeySeconds: seconds.default(2 * 86_400),
      })
      .prefault({}),
    identity: z.object({
      audience: z.string().min(1),
      maxTokenAgeSeconds: seconds.default(3600),
      clockSkewSeconds: z.number().int().min(0).max(300).default(30),
      /** How long one fetch of an issuer's remote JWKS may take; only that issuer's agents wait. */
      jwksTimeoutSeconds: z.number().positive().max(60).default(5),
      issuers: z.array(issuerSchema).min(1),
    }),
    operators: z.array(principalSchema).default([]),
    introspectors: z.array(introspectorSchema).default([]),
    resources: z.array(resourceSchema).default([]),
    policies: z.array(policySchema).default([]),
    /** Operator-written Cedar: `.cedar` files, or directories whose `.cedar` files are read. */
    policyFiles: z.array(z.string().min(1)).default([]),
    /** Identity claims `.cedar` policies may read, beyond those YAML `claims:` conditions name. */
    policyClaims: z.record(claimName, z.enum(CLAIM_TYPES)).default({}),
    tasks: z
      .object({
        defaultTtlSeconds: seconds.default(3600),
        maxTtlSeconds: seconds.default(86_400),
        /** An approved task that has minted no lease this long after its approval ends as expired. */
        approvalUnusedSeconds: seconds.default(3600),
      })
      .prefault({}),
    /**
     * Live-lease and pending-task quotas (docs/approvals.md). Each is off unless set; past one,
     * the request is refused `429 rate_limited` naming the quota.
     */
    quotas: z
      .object({
        /** Leases issuing, active or being revoked, per agent, over every task and shard. */
        liveLeasesPerAgent: z.number().int().min(1).optional(),
        /** The same, per resource. */
        liveLeasesPerResource: z.number().int().min(1).optional(),
        /** Tasks waiting for approval, per agent. */
        pendingTasksPerAgent: z.number().int().min(1).optional(),
      })
      .strict()
      .prefault({}),
    revocation: z
      .object({
        /** Attempts per revocation round, with exponential backoff from `backoffMs`. */
        attempts: z.number().int().min(1).max(50).default(10),
        backoffMs: z.number().int().min(10).default(1000),
        /** How often the reconciler sweeps adapter orphans and trims listing indexes. */
        reconcileIntervalSeconds: seconds.default(30),
        /**
         * How long a mint in `issuing`, or a revocation whose job was lost, may stall before the
         * due sweeper claims it again.
         */
        staleSeconds: seconds.default(120),
        /** `revoke_failed` leases are retried this often until they succeed. */
        retryFailedAfterSeconds: seconds.default(600),
        concurrency: z.number().int().min(1).max(256).default(8),
      })
      .prefault({}),
    limits: z
      .object({
        agentRequestsPerMinute: z.number().int().min(1).default(600),
        failedAuthPerMinute: z.number().int().min(1).default(60),
      })
      .prefault({}),
    retention: z
      .object({
        /** Revoked lease and closed task records expire after this. */
        leaseRecordDays: z.number().min(1).default(30),
        /** Audit events (and their indexes) are trimmed after this. */
        auditDays: z.number().min(1).default(30),
      })
      .prefault({}),
    audit: z
      .object({
        /** How often the sealing job extends the hash chain and signs a checkpoint. */
        sealIntervalSeconds: seconds.max(3600).default(5),
      })
      .prefault({}),
    /** Token exchange (RFC 8693) at `POST /v1/token`: narrower credentials for sub-agents. */
    delegation: z
      .object({
        /** Hops a credential may be delegated from the lease minted directly; 0 turns exchange off. */
        maxDepth: z.number().int().min(0).max(10).default(3),
      })
      .prefault({}),
    /** Sender-constrained credentials (RFC 9449 DPoP proofs on mint and token exchange). */
    dpop: z
      .object({
        /** A proof's `iat` may be at most this far from the broker's clock, either way. */
        proofWindowSeconds: z.number().int().min(5).max(600).default(60),
      })
      .prefault({}),
    log: z.object({ level: z.enum(["error", "warn", "info", "debug"]).default("info") }).prefault({}),
    notifications: z
      .object({
        webhooks: z.array(webhookSchema).default([]),
        /** Delivery attempts per event and webhook, with exponential backoff from `backoffMs`. */
        attempts: z.number().int().min(1).max(30).default(10),
        backoffMs: z.number().int().min(10).default(2000),
        timeoutMs: z.number().int().min(100).max(60_000).default(10_000),
      })
      .prefault({}),
    /** Set by the broker itself when it started without a config file. */
    devMode: z.boolean().default(false),
  })
  .superRefine((config, ctx) => {
    const unique = (items: { name: string }[], path: string) => {
      const seen = new Set<string>();
      items.forEach((item, index) => {
        if (seen.has(item.name))
          ctx.addIssue({
            code: "custom",
            path: [path, index, "name"],
            message: `duplicate name "${item.name}"`,
          });
        seen.add(item.name);
      });
    };
    unique(config.identity.issuers, "identity.issuers");
    const issuerUrls = new Set<string>();
    config.identity.issuers.forEach((issuer, index) => {
      if (issuerUrls.has(issuer.issuer)) {
        ctx.addIssue({
          code: "custom",
          path: ["identity", "issuers", index, "issuer"],
          message: `issuer "${issuer.issuer}" is configured twice`,
        });
      }
      issuerUrls.add(issuer.issuer);
    });
    unique(config.resources, "resources");
    unique(config.notifications.webhooks, "notifications.webhooks");
    unique([...config.operators, ...config.introspectors], "operators");
    const hashes = new Set<string>();
    for (const [path, list] of [
      ["operators", config.operators],
      ["introspectors", config.introspectors],
    ] as const) {
      list.forEach((principal, index) => {
        if (hashes.has(principal.tokenSha256)) {
          ctx.addIssue({
            code: "custom",
            path: [path, index, "tokenSha256"],
            message: "token hash used twice",
          });
        }
        hashes.add(principal.tokenSha256);
      });
    }
    const resources = new Map(config.resources.map((r) => [r.name, r]));
    config.introspectors.forEach((introspector, index) => {
      introspector.resources?.forEach((resourceName, j) => {
        if (!resources.has(resourceName)) {
          ctx.addIssue({
            code: "custom",
            path: ["introspectors", index, "resources", j],
            message: `unknown resource "${resourceName}"`,
          });
        }
      });
    });
    // Rule names become Cedar policy ids, so two rules may not share one.
    const ruleNames = new Set<string>();
    config.policies.forEach((rule, index) => {
      if (rule.name === undefined) return;
      if (ruleNames.has(rule.name))
        ctx.addIssue({
          code: "custom",
          path: ["policies", index, "name"],
          message: `duplicate name "${rule.name}"`,
        });
      ruleNames.add(rule.name);
    });
    config.policies.forEach((rule, index) => {
      const known = rule.resources.flatMap((resourceName, j) => {
        const resource = resources.get(resourceName);
        if (!resource) {
          ctx.addIssue({
            code: "custom",
            path: ["policies", index, "resources", j],
            message: `unknown resource "${resourceName}"`,
          });
        }
        return resource ? [resource] : [];
      });
      for (const s of rule.scopes) {
        if (known.length > 0 && !known.some((resource) => resource.scopes.includes(s))) {
          ctx.addIssue({
            code: "custom",
            path: ["policies", index, "scopes"],
            message: `scope "${s}" is not a scope of any of the rule's resources`,
          });
        }
      }
    });
    if (config.tasks.defaultTtlSeconds > config.tasks.maxTtlSeconds) {
      ctx.addIssue({
        code: "custom",
        path: ["tasks", "defaultTtlSeconds"],
        message: "exceeds tasks.maxTtlSeconds",
      });
    }
  });

export type Config = z.infer<typeof ConfigSchema>;
export type ResourceConfig = Config["resources"][number];
export type PolicyRule = Config["policies"][number];
export type IssuerConfig = Config["identity"]["issuers"][number];

/** A configuration file that does not parse or validate; the message names the field. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Turns zod issues into one line per field: `resources.0.adapter: Invalid option ...`. */
export function describeIssues(error: z.ZodError): string {
  return error.issues.map((issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`).join("\n");
}

/** Validates an already-read config object. */
export function parseConfig(raw: unknown, source = "config"): Config {
  const result = ConfigSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(`${source} is invalid:\n${describeIssues(result.error)}`);
  return result.data;
}

/** What the process environment may say; read here and nowhere else. */
export interface Environment {
  JITKEY_CONFIG?: string | undefined;
  PORT?: string | undefined;
  REDIS_URL?: string | undefined;
  JITKEY_DATA_DIR?: string | undefined;
  LOG_LEVEL?: string | undefined;
}

/** The config file `JITKEY_CONFIG` names, resolved; `undefined` in dev mode. */
export function configPath(env: Environment = process.env): string | undefined {
  return env.JITKEY_CONFIG ? resolve(env.JITKEY_CONFIG) : undefined;
}

/**
 * Loads the config named by `JITKEY_CONFIG` (YAML or JSON) and applies `PORT`,
 * `REDIS_URL`, `JITKEY_DATA_DIR` and `LOG_LEVEL`. Returns `undefined` when no file is named:
 * the caller then starts dev mode.
 */
export async function loadConfigFile(env: Environment = process.env): Promise<Config | undefined> {
  if (!env.JITKEY_CONFIG) return undefined;
  const path = resolve(env.JITKEY_CONFIG);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    throw new ConfigError(`cannot read JITKEY_CONFIG ${path}: ${(error as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = path.endsWith(".json") ? JSON.parse(text) : parseYaml(text);
  } catch (error) {
    throw new ConfigError(
      `${path} is not valid ${path.endsWith(".json") ? "JSON" : "YAML"}: ${(error as Error).message}`,
    );
  }
  return parseConfig(applyEnvironment(raw, env), path);
}

/** Overlays environment overrides on a raw (unvalidated) config object. */
export function applyEnvironment(raw: unknown, env: Environment = process.env): unknown {
  const config = structuredClone((raw ?? {}) as Record<string, Record<string, unknown>>);
  if (env.PORT !== undefined) {
    const port = Number(env.PORT);
    if (!Number.isInteger(port)) throw new ConfigError(`PORT must be an integer, got "${env.PORT}"`);
    config.http = { ...config.http, port };
  }
  if (env.REDIS_URL) config.redis = { ...config.redis, url: env.REDIS_URL };
  if (env.JITKEY_DATA_DIR) config.data = { ...config.data, dir: env.JITKEY_DATA_DIR };
  if (env.LOG_LEVEL) config.log = { ...config.log, level: env.LOG_LEVEL };
  return config;
}

/** The issuer URL of broker-signed credentials. */
export function publicUrl(config: Config, boundPort?: number): string {
  if (config.http.publicUrl) return config.http.publicUrl.replace(/\/$/, "");
  const host = config.http.host === "0.0.0.0" || config.http.host === "::" ? "127.0.0.1" : config.http.host;
  return `http://${host}:${boundPort ?? config.http.port}`;
}
