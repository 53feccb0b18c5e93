import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { SIGNING_ALGORITHMS } from "../adapters/jwt/signing-keys.ts";
import { ADAPTER_KINDS } from "../adapters/registry.ts";

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

const issuerSchema = z
  .object({
    name,
    issuer: z.string().min(1),
    jwksUri: z.url().optional(),
    jwks: z.object({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }).optional(),
    agentIdClaim: z.string().min(1).default("sub"),
    owner: z.string().optional(),
  })
  .refine((i) => (i.jwksUri === undefined) !== (i.jwks === undefined), {
    message: "set exactly one of jwksUri or jwks",
  });

const principalSchema = z.object({ name, tokenSha256: sha256Hex });

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
      })
      .prefault({}),
    redis: z
      .object({
        /** No url ⇒ the broker runs a private redis-server under the data directory. */
        url: z.string().optional(),
        prefix: z
          .string()
          .regex(/^[A-Za-z0-9:_-]+$/)
          .default("jitkey"),
      })
      .prefault({}),
    data: z.object({ dir: z.string().default(".jitkey") }).prefault({}),
    signing: z
      .object({ keyFile: z.string().optional(), pemAlgorithm: z.enum(SIGNING_ALGORITHMS).default("ES256") })
      .prefault({}),
    identity: z.object({
      audience: z.string().min(1),
      maxTokenAgeSeconds: seconds.default(3600),
      clockSkewSeconds: z.number().int().min(0).max(300).default(30),
      issuers: z.array(issuerSchema).min(1),
    }),
    operators: z.array(principalSchema).default([]),
    introspectors: z.array(principalSchema).default([]),
    resources: z.array(resourceSchema).default([]),
    policies: z.array(policySchema).default([]),
    /** Operator-written Cedar: `.cedar` files, or directories whose `.cedar` files are read. */
    policyFiles: z.array(z.string().min(1)).default([]),
    /** Identity claims `.cedar` policies may read, beyond those YAML `claims:` conditions name. */
    policyClaims: z.record(claimName, z.enum(CLAIM_TYPES)).default({}),
    tasks: z
      .object({ defaultTtlSeconds: seconds.default(3600), maxTtlSeconds: seconds.default(86_400) })
      .prefault({}),
    revocation: z
      .object({
        attempts: z.number().int().min(1).max(50).default(10),
        backoffMs: z.number().int().min(10).default(1000),
        reconcileIntervalSeconds: seconds.default(30),
        /** A lease stuck in `revoking`/`issuing` this long gets its revoke job enqueued again. */
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
    retention: z.object({ leaseRecordDays: z.number().min(1).default(30) }).prefault({}),
    log: z.object({ level: z.enum(["error", "warn", "info", "debug"]).default("info") }).prefault({}),
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
