/**
 * FakeVaultServer — a FAKE of HashiCorp Vault / OpenBao for tests on machines without Vault.
 *
 * It follows Vault's documented HTTP API (request and response JSON of the token auth
 * method, AppRole login, `sys/leases`, `sys/wrapping`, `sys/health` and the database secrets
 * engine) for exactly the endpoints jitkey's vault adapter uses, so the adapter can be driven
 * through the real node-vault client. It is not Vault: no storage, no seal, one mount of the
 * database engine at `database/`, a small ACL model (exact paths and trailing `*` globs), and
 * at most one namespace. Where Vault and OpenBao differ it follows HashiCorp Vault's documented
 * defaults (e.g. `sys/leases/revoke` is synchronous and answers 204).
 *
 * `database/creds/<role>` is backed by a real PostgreSQL server (see {@link FakeDatabaseRole}):
 * reading it creates a LOGIN role with a password and VALID UNTIL; revoking the lease, or the
 * token that read it, drops the role, as Vault's PostgreSQL plugin does.
 */
import { randomBytes } from "node:crypto";
import type { Server } from "node:net";
import pg from "pg";
import { type RawRequest, type RawResponse, startHttp11Server } from "./http11-server.ts";

/** One ACL rule: `path` is exact, or a prefix when it ends in `*`. */
export interface FakePolicyRule {
  readonly path: string;
  readonly capabilities: readonly ("create" | "read" | "update" | "delete" | "list" | "sudo" | "deny")[];
}

/** An AppRole the fake accepts at `auth/approle/login`. */
export interface FakeAppRole {
  readonly roleName: string;
  readonly roleId: string;
  readonly secretId: string;
  readonly policies: readonly string[];
  readonly tokenTtlSeconds: number;
  readonly tokenMaxTtlSeconds: number;
}

/** The fields Vault hands a username template. */
export interface UsernameTemplateFields {
  readonly displayName: string;
  readonly roleName: string;
}

/**
 * Vault's PostgreSQL default: `{{ printf "v-%s-%s-%s-%s" (.DisplayName | truncate 8)
 * (.RoleName | truncate 8) (random 20) (unix_time) | truncate 63 }}`.
 */
export function vaultDefaultUsername(fields: UsernameTemplateFields): string {
  const name = `v-${fields.displayName.slice(0, 8)}-${fields.roleName.slice(0, 8)}-${randomAlnum(20)}-${Math.floor(Date.now() / 1000)}`;
  return name.slice(0, 63);
}

/**
 * The template jitkey's docs recommend (and compose.yaml configures), which keeps the whole
 * token display name and therefore the jitkey lease id: `{{ printf "v-%s-%s-%s" (.DisplayName
 * | truncate 40) (.RoleName | truncate 8) (random 8) | truncate 63 }}`.
 */
export function jitkeyUsernameTemplate(fields: UsernameTemplateFields): string {
  return `v-${fields.displayName.slice(0, 40)}-${fields.roleName.slice(0, 8)}-${randomAlnum(8)}`.slice(0, 63);
}

/** A role of the fake database secrets engine, backed by a real PostgreSQL server. */
export interface FakeDatabaseRole {
  readonly name: string;
  /** libpq connection string of a role that may CREATE ROLE. */
  readonly connectionString: string;
  readonly defaultTtlSeconds: number;
  readonly maxTtlSeconds: number;
  /** SQL with `{{name}}`, `{{password}}`, `{{expiration}}`, run in order. */
  readonly creationStatements: readonly string[];
  /** SQL with `{{name}}`; defaults to `DROP ROLE IF EXISTS "{{name}}"`. */
  readonly revocationStatements?: readonly string[];
  /** Defaults to {@link vaultDefaultUsername}. */
  readonly usernameTemplate?: (fields: UsernameTemplateFields) => string;
}

/** What a test can inject: answer the next matching requests with an error, or delay them. */
export interface FakeFault {
  readonly method?: string;
  /** Matches the API path without `/v1/`, e.g. `sys/leases/revoke`. */
  readonly path: string | RegExp;
  readonly status?: number;
  readonly errors?: readonly string[];
  readonly delayMs?: number;
  /** How many requests it applies to; default 1. */
  times?: number;
}

/** One request as the fake saw it (no token values, only whether one was sent). */
export interface FakeRequestRecord {
  readonly method: string;
  readonly path: string;
  readonly namespace: string | undefined;
  readonly wrapTtl: string | undefined;
  readonly tokenAccessor: string | undefined;
}

interface TokenEntry {
  id: string;
  accessor: string;
  policies: string[];
  meta: Record<string, string> | null;
  displayName: string;
  path: string;
  creationTime: number;
  creationTtl: number;
  /** ms epoch; null = never expires (root). */
  expireAt: number | null;
  /** Hard limit from explicit_max_ttl or an auth method's max TTL. */
  maxExpireAt: number | null;
  renewable: boolean;
  orphan: boolean;
  parentId: string | undefined;
  numUses: number;
}

interface LeaseEntry {
  id: string;
  path: string;
  role: FakeDatabaseRole;
  tokenId: string;
  username: string;
  issueTime: number;
  expireAt: number;
  maxExpireAt: number;
  lastRenewal: number | null;
}

interface WrapEntry {
  token: string;
  accessor: string;
  body: unknown;
  creationPath: string;
  creationTime: number;
  expireAt: number;
}

const DEFAULT_POLICY: FakePolicyRule[] = [
  { path: "auth/token/lookup-self", capabilities: ["read"] },
  { path: "auth/token/renew-self", capabilities: ["update"] },
  { path: "auth/token/revoke-self", capabilities: ["update"] },
  { path: "sys/leases/lookup", capabilities: ["update"] },
  { path: "sys/wrapping/wrap", capabilities: ["update"] },
  { path: "sys/wrapping/lookup", capabilities: ["update"] },
  { path: "sys/wrapping/unwrap", capabilities: ["update"] },
  { path: "cubbyhole/*", capabilities: ["create", "read", "update", "delete", "list"] },
];

/** Paths Vault marks as root-protected: they need `sudo` besides the verb's capability. */
const SUDO_PATHS = [/^auth\/token\/accessors\/?$/, /^sys\/leases\/lookup\/.+/];

function randomAlnum(length: number): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = randomBytes(length);
  let out = "";
  for (const byte of bytes) out += alphabet[byte % alphabet.length];
  return out;
}

function requestId(): string {
  const hex = randomBytes(16).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Vault accepts a number of seconds or a Go-style duration string such as `90s`, `5m`, `1h`. */
export function parseVaultDuration(value: unknown): number | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value === "number") return Math.floor(value);
  const match = /^(\d+)(s|m|h)?$/.exec(String(value).trim());
  if (!match) return Number.NaN;
  const amount = Number(match[1]);
  return amount * ({ s: 1, m: 60, h: 3600 }[match[2] as "s" | "m" | "h"] ?? 1);
}

function envelope(
  fields: { data?: unknown; auth?: unknown; warnings?: string[] } = {},
): Record<string, unknown> {
  return {
    request_id: requestId(),
    lease_id: "",
    renewable: false,
    lease_duration: 0,
    data: fields.data ?? null,
    wrap_info: null,
    warnings: fields.warnings && fields.warnings.length > 0 ? fields.warnings : null,
    auth: fields.auth ?? null,
  };
}

function vaultError(status: number, ...errors: string[]): RawResponse {
  return { status, body: { errors } };
}

const PERMISSION_DENIED = vaultError(403, "permission denied");

/**
 * A fake Vault server. Start with {@link FakeVaultServer.start}; `address` is its base URL and
 * `rootToken` a root token. Everything else is configured programmatically.
 */
export class FakeVaultServer {
  readonly rootToken: string;
  /** Every request in order, without secrets. */
  readonly requests: FakeRequestRecord[] = [];
  private readonly tokens = new Map<string, TokenEntry>();
  private readonly accessors = new Map<string, string>();
  private readonly leases = new Map<string, LeaseEntry>();
  private readonly wraps = new Map<string, WrapEntry>();
  private readonly policies = new Map<string, FakePolicyRule[]>();
  private readonly appRoles: FakeAppRole[] = [];
  private readonly databaseRoles = new Map<string, FakeDatabaseRole>();
  private readonly pools = new Map<string, pg.Pool>();
  private readonly faults: FakeFault[] = [];
  private server: Server | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private port = 0;

  private constructor(private readonly options: { namespace?: string }) {
    const root = this.mintToken({
      policies: ["root"],
      displayName: "root",
      path: "auth/token/root",
      orphan: true,
    });
    this.rootToken = root.id;
  }

  /**
   * Starts a fake on 127.0.0.1. With `namespace`, every request except `sys/health` must
   * carry `X-Vault-Namespace: <namespace>` (tokens live in that namespace), else 403.
   */
  static async start(options: { namespace?: string } = {}): Promise<FakeVaultServer> {
    const fake = new FakeVaultServer(options);
    const { server, port } = await startHttp11Server((request) => fake.handle(request));
    fake.server = server;
    fake.port = port;
    // Vault expires tokens and leases on its own; tick so expiry drops database roles too.
    fake.ticker = setInterval(() => void fake.expireDue(), 100);
    fake.ticker.unref();
    return fake;
  }

  /** Base URL, e.g. `http://127.0.0.1:41234`. */
  get address(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    if (this.ticker) clearInterval(this.ticker);
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    for (const pool of this.pools.values()) await pool.end();
    this.pools.clear();
  }

  // ---- configuration (test side) ---------------------------------------------------------

  setPolicy(name: string, rules: readonly FakePolicyRule[]): void {
    this.policies.set(name, [...rules]);
  }

  addAppRole(role: FakeAppRole): void {
    this.appRoles.push(role);
  }

  addDatabaseRole(role: FakeDatabaseRole): void {
    this.databaseRoles.set(role.name, role);
  }

  /** Answers the next request(s) matching `fault` with its status and errors, or delays them. */
  injectFault(fault: FakeFault): void {
    this.faults.push({ ...fault, times: fault.times ?? 1 });
  }

  /** How many injected faults have not been hit yet. */
  faultsPending(): number {
    return this.faults.reduce((sum, fault) => sum + (fault.times ?? 0), 0);
  }

  /** Creates a token directly (as an operator would with the CLI) and returns its id. */
  createToken(options: {
    policies: string[];
    ttlSeconds?: number;
    renewable?: boolean;
    maxTtlSeconds?: number;
  }): string {
    const now = Date.now();
    return this.mintToken({
      policies: [...options.policies, "default"],
      displayName: "token",
      path: "auth/token/create",
      orphan: true,
      ttlSeconds: options.ttlSeconds,
      renewable: options.renewable ?? true,
      maxExpireAt: options.maxTtlSeconds ? now + options.maxTtlSeconds * 1000 : null,
    }).id;
  }

  // ---- inspection (test side; looks at the fake's state, not at what the adapter said) ----

  /** Live tokens without their ids. */
  liveTokens(): {
    accessor: string;
    displayName: string;
    meta: Record<string, string> | null;
    policies: string[];
  }[] {
    const now = Date.now();
    return [...this.tokens.values()]
      .filter((token) => token.expireAt === null || token.expireAt > now)
      .map((token) => ({
        accessor: token.accessor,
        displayName: token.displayName,
        meta: token.meta,
        policies: token.policies,
      }));
  }

  /** Live leases with the accessor of the token that owns each. */
  liveLeases(): { id: string; ownerAccessor: string; username: string; issueTime: Date; expireAt: Date }[] {
    return [...this.leases.values()].map((lease) => ({
      id: lease.id,
      ownerAccessor: this.tokens.get(lease.tokenId)?.accessor ?? "",
      username: lease.username,
      issueTime: new Date(lease.issueTime),
      expireAt: new Date(lease.expireAt),
    }));
  }

  /** Expiry of a live token by accessor, for asserting caps. */
  tokenExpiry(accessor: string): Date | null | undefined {
    const id = this.accessors.get(accessor);
    const token = id ? this.tokens.get(id) : undefined;
    if (!token) return undefined;
    return token.expireAt === null ? null : new Date(token.expireAt);
  }

  /** Moves a lease's issue time into the past, as if it had been created earlier. */
  backdateLease(leaseId: string, seconds: number): void {
    const lease = this.leases.get(leaseId);
    if (lease) lease.issueTime -= seconds * 1000;
  }

  countRequests(path: string, method?: string): number {
    return this.requests.filter((r) => r.path === path && (!method || r.method === method)).length;
  }

  // ---- token store -------------------------------------------------------------------------

  private mintToken(spec: {
    policies: string[];
    displayName: string;
    path: string;
    orphan: boolean;
    parentId?: string;
    ttlSeconds?: number | undefined;
    renewable?: boolean;
    meta?: Record<string, string> | null;
    maxExpireAt?: number | null;
    numUses?: number;
  }): TokenEntry {
    const now = Date.now();
    const isRoot = spec.policies.includes("root");
    const ttl = spec.ttlSeconds ?? (isRoot ? 0 : 32 * 24 * 3600);
    let expireAt = ttl > 0 ? now + ttl * 1000 : null;
    if (spec.maxExpireAt && (expireAt === null || expireAt > spec.maxExpireAt)) expireAt = spec.maxExpireAt;
    const token: TokenEntry = {
      id: `hvs.${randomAlnum(24)}`,
      accessor: randomAlnum(24),
      policies: [...new Set(spec.policies)].sort(),
      meta: spec.meta && Object.keys(spec.meta).length > 0 ? { ...spec.meta } : null,
      displayName: spec.displayName,
      path: spec.path,
      creationTime: now,
      creationTtl: ttl,
      expireAt,
      maxExpireAt: spec.maxExpireAt ?? null,
      renewable: spec.renewable ?? true,
      orphan: spec.orphan,
      parentId: spec.parentId,
      numUses: spec.numUses ?? 0,
    };
    this.tokens.set(token.id, token);
    this.accessors.set(token.accessor, token.id);
    return token;
  }

  private liveToken(id: string | undefined): TokenEntry | undefined {
    if (!id) return undefined;
    const token = this.tokens.get(id);
    if (!token) return undefined;
    if (token.expireAt !== null && token.expireAt <= Date.now()) return undefined;
    return token;
  }

  private ttlOf(token: TokenEntry): number {
    return token.expireAt === null ? 0 : Math.max(0, Math.round((token.expireAt - Date.now()) / 1000));
  }

  private tokenLookupData(token: TokenEntry, withId: boolean): Record<string, unknown> {
    return {
      accessor: token.accessor,
      creation_time: Math.floor(token.creationTime / 1000),
      creation_ttl: token.creationTtl,
      display_name: token.displayName,
      entity_id: "",
      expire_time: token.expireAt === null ? null : new Date(token.expireAt).toISOString(),
      explicit_max_ttl: token.maxExpireAt ? Math.round((token.maxExpireAt - token.creationTime) / 1000) : 0,
      id: withId ? token.id : "",
      issue_time: new Date(token.creationTime).toISOString(),
      meta: token.meta,
      num_uses: token.numUses,
      orphan: token.orphan,
      path: token.path,
      policies: token.policies,
      renewable: token.renewable,
      ttl: this.ttlOf(token),
      type: "service",
    };
  }

  private authBlock(token: TokenEntry, withId = true): Record<string, unknown> {
    return {
      client_token: withId ? token.id : "",
      accessor: token.accessor,
      policies: token.policies,
      token_policies: token.policies,
      metadata: token.meta,
      lease_duration: this.ttlOf(token),
      renewable: token.renewable,
      entity_id: "",
      token_type: "service",
      orphan: token.orphan,
      num_uses: token.numUses,
      mfa_requirement: null,
    };
  }

  private async revokeToken(token: TokenEntry): Promise<void> {
    // Children first, then every lease the token read, as Vault's revoke-tree does.
    for (const child of [...this.tokens.values()]) {
      if (child.parentId === token.id) await this.revokeToken(child);
    }
    for (const lease of [...this.leases.values()]) {
      if (lease.tokenId === token.id) await this.revokeLease(lease);
    }
    this.tokens.delete(token.id);
    this.accessors.delete(token.accessor);
  }

  private renewToken(token: TokenEntry, incrementRaw: unknown): RawResponse {
    if (!token.renewable || token.expireAt === null) return vaultError(400, "lease is not renewable");
    const increment = parseVaultDuration(incrementRaw) ?? token.creationTtl;
    if (Number.isNaN(increment)) return vaultError(400, "invalid increment");
    const now = Date.now();
    let expireAt = now + increment * 1000;
    const warnings: string[] = [];
    if (token.maxExpireAt && expireAt > token.maxExpireAt) {
      expireAt = token.maxExpireAt;
      warnings.push(
        "TTL of the renewed token exceeded the effective max_ttl; TTL value is capped accordingly",
      );
    }
    token.expireAt = expireAt;
    return { status: 200, body: envelope({ auth: this.authBlock(token, false), warnings }) };
  }

  // ---- ACL -----------------------------------------------------------------------------------

  private can(token: TokenEntry, path: string, capability: string): boolean {
    if (token.policies.includes("root")) return true;
    const rules = [
      ...token.policies.flatMap((name) => this.policies.get(name) ?? []),
      ...(token.policies.includes("default") ? DEFAULT_POLICY : []),
    ];
    const matching = rules.filter((rule) =>
      rule.path.endsWith("*") ? path.startsWith(rule.path.slice(0, -1)) : rule.path === path,
    );
    if (matching.some((rule) => rule.capabilities.includes("deny"))) return false;
    const granted = new Set<string>(matching.flatMap((rule) => rule.capabilities));
    const verbOk =
      capability === "update" ? granted.has("update") || granted.has("create") : granted.has(capability);
    const needsSudo = SUDO_PATHS.some((pattern) => pattern.test(path));
    return verbOk && (!needsSudo || granted.has("sudo"));
  }

  // ---- leases --------------------------------------------------------------------------------

  private pool(role: FakeDatabaseRole): pg.Pool {
    let pool = this.pools.get(role.connectionString);
    if (!pool) {
      pool = new pg.Pool({ connectionString: role.connectionString, max: 4 });
      pool.on("error", () => {});
      this.pools.set(role.connectionString, pool);
    }
    return pool;
  }

  private async runStatements(
    role: FakeDatabaseRole,
    statements: readonly string[],
    values: Record<string, string>,
  ): Promise<void> {
    const client = await this.pool(role).connect();
    try {
      for (const statement of statements) {
        const sql = statement.replace(/\{\{(\w+)\}\}/g, (_, key: string) => values[key] ?? `{{${key}}}`);
        await client.query(sql);
      }
    } finally {
      client.release();
    }
  }

  private async revokeLease(lease: LeaseEntry): Promise<void> {
    this.leases.delete(lease.id);
    await this.runStatements(
      lease.role,
      lease.role.revocationStatements ?? ['DROP ROLE IF EXISTS "{{name}}"'],
      {
        name: lease.username,
        username: lease.username,
      },
    );
  }

  private expiring = false;

  private async expireDue(): Promise<void> {
    if (this.expiring) return;
    this.expiring = true;
    try {
      const now = Date.now();
      for (const token of [...this.tokens.values()]) {
        if (token.expireAt !== null && token.expireAt <= now) await this.revokeToken(token);
      }
      for (const lease of [...this.leases.values()]) if (lease.expireAt <= now) await this.revokeLease(lease);
      for (const wrap of [...this.wraps.values()]) if (wrap.expireAt <= now) this.wraps.delete(wrap.token);
    } catch {
      // A database hiccup: the next tick retries, as Vault's expiration manager does.
    } finally {
      this.expiring = false;
    }
  }

  private static expiration(at: number): string {
    // Vault's PostgreSQL plugin formats {{expiration}} as "2006-01-02 15:04:05-0700" (UTC here).
    return `${new Date(at).toISOString().replace("T", " ").slice(0, 19)}+0000`;
  }

  private async readDatabaseCreds(token: TokenEntry, roleName: string, path: string): Promise<RawResponse> {
    const role = this.databaseRoles.get(roleName);
    if (!role) return vaultError(400, `unknown role: ${roleName}`);
    const now = Date.now();
    const ttl = Math.min(role.defaultTtlSeconds, role.maxTtlSeconds);
    const username = (role.usernameTemplate ?? vaultDefaultUsername)({
      displayName: token.displayName,
      roleName,
    });
    const password = `A1a-${randomAlnum(20)}`;
    try {
      await this.runStatements(role, role.creationStatements, {
        name: username,
        username,
        password,
        expiration: FakeVaultServer.expiration(now + ttl * 1000),
      });
    } catch (error) {
      return vaultError(500, `1 error occurred:\n\t* ${(error as Error).message}\n\n`);
    }
    const lease: LeaseEntry = {
      id: `${path}/${randomAlnum(24)}`,
      path,
      role,
      tokenId: token.id,
      username,
      issueTime: now,
      expireAt: now + ttl * 1000,
      maxExpireAt: now + role.maxTtlSeconds * 1000,
      lastRenewal: null,
    };
    this.leases.set(lease.id, lease);
    return {
      status: 200,
      body: {
        ...envelope({ data: { username, password } }),
        lease_id: lease.id,
        renewable: true,
        lease_duration: ttl,
      },
    };
  }

  private async renewLease(leaseId: string, incrementRaw: unknown): Promise<RawResponse> {
    const lease = this.leases.get(leaseId);
    if (!lease || lease.expireAt <= Date.now()) return vaultError(400, "lease not found");
    const increment = parseVaultDuration(incrementRaw) ?? lease.role.defaultTtlSeconds;
    if (Number.isNaN(increment)) return vaultError(400, "invalid increment");
    const now = Date.now();
    const expireAt = Math.min(now + increment * 1000, lease.maxExpireAt);
    const warnings =
      expireAt < now + increment * 1000
        ? ["TTL of the renewed lease exceeded the max_ttl of the role; TTL value is capped accordingly"]
        : [];
    await this.runStatements(lease.role, ["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'"], {
      name: lease.username,
      expiration: FakeVaultServer.expiration(expireAt),
    });
    lease.expireAt = expireAt;
    lease.lastRenewal = now;
    return {
      status: 200,
      body: {
        ...envelope({ warnings }),
        lease_id: lease.id,
        renewable: true,
        lease_duration: Math.round((expireAt - now) / 1000),
      },
    };
  }

  // ---- wrapping ------------------------------------------------------------------------------

  private wrap(body: Record<string, unknown>, ttlSeconds: number, creationPath: string): RawResponse {
    const now = Date.now();
    const entry: WrapEntry = {
      token: `hvs.${randomAlnum(24)}`,
      accessor: randomAlnum(24),
      body,
      creationPath,
      creationTime: now,
      expireAt: now + ttlSeconds * 1000,
    };
    this.wraps.set(entry.token, entry);
    const auth = body.auth as { accessor?: string } | null | undefined;
    return {
      status: 200,
      body: {
        ...envelope(),
        wrap_info: {
          token: entry.token,
          accessor: entry.accessor,
          ttl: ttlSeconds,
          creation_time: new Date(now).toISOString(),
          creation_path: creationPath,
          wrapped_accessor: auth?.accessor ?? "",
        },
      },
    };
  }

  // ---- request handling ----------------------------------------------------------------------

  private async handle(request: RawRequest): Promise<RawResponse> {
    const url = new URL(request.target, "http://fake");
    if (!url.pathname.startsWith("/v1/")) return vaultError(404);
    const path = url.pathname.slice(4).replace(/\/+$/, "");
    const isList = request.method === "LIST" || (request.method === "GET" && url.searchParams.has("list"));
    const method = isList ? "LIST" : request.method === "PUT" ? "POST" : request.method;
    const callerId = request.headers["x-vault-token"];
    const caller = this.liveToken(callerId);
    this.requests.push({
      method,
      path,
      namespace: request.headers["x-vault-namespace"],
      wrapTtl: request.headers["x-vault-wrap-ttl"],
      tokenAccessor: caller?.accessor,
    });

    const fault = this.faults.find(
      (f) =>
        (f.times ?? 0) > 0 &&
        (!f.method || f.method === method) &&
        (typeof f.path === "string" ? f.path === path : f.path.test(path)),
    );
    if (fault) {
      fault.times = (fault.times ?? 1) - 1;
      if (fault.delayMs) await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
      if (fault.status) return vaultError(fault.status, ...(fault.errors ?? []));
    }

    if (path === "sys/health" && method === "GET") {
      return {
        status: 200,
        body: {
          initialized: true,
          sealed: false,
          standby: false,
          performance_standby: false,
          replication_performance_mode: "disabled",
          replication_dr_mode: "disabled",
          server_time_utc: Math.floor(Date.now() / 1000),
          version: "1.17.0+fake",
          cluster_name: "fake-vault",
          cluster_id: "00000000-0000-0000-0000-000000000000",
        },
      };
    }
    if (this.options.namespace && request.headers["x-vault-namespace"] !== this.options.namespace) {
      // Tokens live in the namespace; outside it Vault does not know them.
      return PERMISSION_DENIED;
    }

    let body: Record<string, unknown> = {};
    if (request.body.length > 0) {
      try {
        body = JSON.parse(request.body.toString("utf8")) as Record<string, unknown>;
      } catch {
        return vaultError(400, "failed to parse JSON input");
      }
    }

    const response = await this.route(method, path, body, caller, callerId);
    const wrapTtl = parseVaultDuration(request.headers["x-vault-wrap-ttl"]);
    if (path === "sys/wrapping/wrap" && wrapTtl === undefined && response.status === 200) {
      return vaultError(400, "wrapping requested but no wrap TTL given");
    }
    if (wrapTtl !== undefined && response.status === 200 && path !== "sys/wrapping/unwrap") {
      if (Number.isNaN(wrapTtl) || wrapTtl <= 0) return vaultError(400, "invalid wrap TTL");
      return this.wrap(response.body as Record<string, unknown>, wrapTtl, path);
    }
    return response;
  }

  private async route(
    method: string,
    path: string,
    body: Record<string, unknown>,
    caller: TokenEntry | undefined,
    callerId: string | undefined,
  ): Promise<RawResponse> {
    // Unauthenticated endpoints first.
    if (path === "auth/approle/login" && method === "POST") {
      const role = this.appRoles.find((r) => r.roleId === body.role_id);
      if (!role) return vaultError(400, "invalid role ID");
      if (role.secretId !== body.secret_id) return vaultError(400, "invalid secret id");
      const now = Date.now();
      const token = this.mintToken({
        policies: [...role.policies, "default"],
        displayName: "approle",
        path: "auth/approle/login",
        orphan: true,
        ttlSeconds: role.tokenTtlSeconds,
        meta: { role_name: role.roleName },
        maxExpireAt: now + role.tokenMaxTtlSeconds * 1000,
      });
      return { status: 200, body: envelope({ auth: this.authBlock(token) }) };
    }
    if (path === "sys/wrapping/unwrap" && method === "POST") {
      const wrapToken = typeof body.token === "string" && body.token ? body.token : callerId;
      const entry = wrapToken ? this.wraps.get(wrapToken) : undefined;
      if (!entry || entry.expireAt <= Date.now()) {
        return vaultError(400, "wrapping token is not valid or does not exist");
      }
      this.wraps.delete(entry.token);
      return { status: 200, body: entry.body };
    }

    if (!caller) return PERMISSION_DENIED;
    const capability =
      method === "GET" ? "read" : method === "LIST" ? "list" : method === "DELETE" ? "delete" : "update";
    if (!this.can(caller, path, capability)) return PERMISSION_DENIED;

    if (method === "POST" && (path === "auth/token/create" || path === "auth/token/create-orphan")) {
      return this.createTokenFromApi(caller, path, body);
    }
    if (method === "GET" && path === "auth/token/lookup-self") {
      return { status: 200, body: envelope({ data: this.tokenLookupData(caller, true) }) };
    }
    if (method === "POST" && path === "auth/token/renew-self") {
      const response = this.renewToken(caller, body.increment);
      if (response.status === 200) {
        (response.body as { auth: { client_token: string } }).auth.client_token = caller.id;
      }
      return response;
    }
    if (method === "LIST" && path === "auth/token/accessors") {
      const now = Date.now();
      const keys = [...this.tokens.values()]
        .filter((token) => token.expireAt === null || token.expireAt > now)
        .map((token) => token.accessor);
      return { status: 200, body: envelope({ data: { keys } }) };
    }
    if (method === "POST" && path.startsWith("auth/token/") && path.endsWith("-accessor")) {
      const accessor = body.accessor;
      if (typeof accessor !== "string" || !accessor) return vaultError(400, "missing accessor");
      const token = this.liveToken(this.accessors.get(accessor));
      if (path === "auth/token/lookup-accessor") {
        if (!token) return vaultError(400, "invalid accessor");
        return { status: 200, body: envelope({ data: this.tokenLookupData(token, false) }) };
      }
      if (path === "auth/token/revoke-accessor") {
        if (!token)
          return { status: 200, body: envelope({ warnings: ["No token found with this accessor"] }) };
        await this.revokeToken(token);
        return { status: 204 };
      }
      if (path === "auth/token/renew-accessor") {
        if (!token) return vaultError(400, "invalid accessor");
        return this.renewToken(token, body.increment);
      }
    }
    if (method === "GET" && path.startsWith("database/creds/")) {
      return this.readDatabaseCreds(caller, path.slice("database/creds/".length), path);
    }
    if (method === "POST" && path === "sys/leases/lookup") {
      const lease = typeof body.lease_id === "string" ? this.leases.get(body.lease_id) : undefined;
      if (!lease) return vaultError(400, "invalid lease");
      return {
        status: 200,
        body: envelope({
          data: {
            id: lease.id,
            issue_time: new Date(lease.issueTime).toISOString(),
            expire_time: new Date(lease.expireAt).toISOString(),
            last_renewal: lease.lastRenewal === null ? null : new Date(lease.lastRenewal).toISOString(),
            renewable: true,
            ttl: Math.max(0, Math.round((lease.expireAt - Date.now()) / 1000)),
          },
        }),
      };
    }
    if (method === "LIST" && path.startsWith("sys/leases/lookup/")) {
      const prefix = `${path.slice("sys/leases/lookup/".length)}/`;
      const keys = new Set<string>();
      for (const id of this.leases.keys()) {
        if (!id.startsWith(prefix)) continue;
        const rest = id.slice(prefix.length);
        const slash = rest.indexOf("/");
        keys.add(slash < 0 ? rest : rest.slice(0, slash + 1));
      }
      if (keys.size === 0) return vaultError(404);
      return { status: 200, body: envelope({ data: { keys: [...keys].sort() } }) };
    }
    if (method === "POST" && path === "sys/leases/renew") {
      return this.renewLease(String(body.lease_id ?? ""), body.increment);
    }
    if (method === "POST" && path === "sys/leases/revoke") {
      if (typeof body.lease_id !== "string" || !body.lease_id)
        return vaultError(400, "lease_id must be specified");
      const lease = this.leases.get(body.lease_id);
      if (lease) await this.revokeLease(lease);
      return body.sync === false ? { status: 202 } : { status: 204 };
    }
    if (method === "POST" && path === "sys/wrapping/wrap") {
      return { status: 200, body: envelope({ data: body }) };
    }
    return vaultError(404);
  }

  private createTokenFromApi(caller: TokenEntry, path: string, body: Record<string, unknown>): RawResponse {
    const callerIsRoot = caller.policies.includes("root");
    const sudo = callerIsRoot || this.can(caller, "auth/token/create", "sudo");
    const requested = Array.isArray(body.policies) ? body.policies.map(String) : undefined;
    if (requested && !sudo) {
      const allowed = new Set(caller.policies);
      if (!requested.every((p) => allowed.has(p) || p === "default")) {
        return vaultError(400, "child policies must be subset of parent");
      }
    }
    const orphan = path === "auth/token/create-orphan" || (body.no_parent === true && sudo);
    let policies = requested ?? caller.policies;
    if (!policies.includes("root") && body.no_default_policy !== true) policies = [...policies, "default"];
    const ttl = parseVaultDuration(body.ttl);
    const explicitMax = parseVaultDuration(body.explicit_max_ttl);
    if (Number.isNaN(ttl) || Number.isNaN(explicitMax)) return vaultError(400, "invalid duration");
    const displayName =
      typeof body.display_name === "string" && body.display_name
        ? `token-${body.display_name}`.replace(/[^a-zA-Z0-9-]/g, "-").replace(/-$/, "")
        : "token";
    const meta =
      body.meta && typeof body.meta === "object"
        ? Object.fromEntries(
            Object.entries(body.meta as Record<string, unknown>).map(([k, v]) => [k, String(v)]),
          )
        : null;
    const now = Date.now();
    const token = this.mintToken({
      policies,
      displayName,
      path,
      orphan,
      parentId: orphan ? undefined : caller.id,
      ttlSeconds: ttl ?? (callerIsRoot && !requested ? 0 : undefined),
      renewable: body.renewable !== false,
      meta,
      maxExpireAt: explicitMax ? now + explicitMax * 1000 : null,
      numUses: typeof body.num_uses === "number" ? body.num_uses : 0,
    });
    return { status: 200, body: envelope({ auth: this.authBlock(token) }) };
  }
}
