/**
 * FakeGcpServer — a FAKE of two Google REST endpoints, for tests on machines without GCP.
 *
 * It follows the documented requests, responses and errors of exactly what jitkey's gcp adapter
 * calls, so the adapter runs through the real `@google-cloud/iam-credentials` client (REST
 * transport) and its own STS request:
 *
 * - IAM Service Account Credentials API v1, `projects.serviceAccounts.generateAccessToken`:
 *   `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken` with
 *   `{delegates?, scope, lifetime: "600s"}`, answering `{accessToken, expireTime}`
 *   (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken).
 * - Security Token Service v1 `token` (RFC 8693 token exchange with a Credential Access Boundary
 *   in `options`): `POST /v1/token`, form-encoded, answering
 *   `{access_token, issued_token_type, token_type, expires_in}`
 *   (https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token,
 *   https://cloud.google.com/iam/docs/downscoping-short-lived-credentials).
 *
 * Errors use Google's JSON error model, `{"error": {"code", "message", "status"}}` with the
 * canonical status names (https://cloud.google.com/apis/design/errors); STS answers OAuth-style
 * `{"error", "error_description"}`. It is not Google: one caller identity per bearer token, a
 * Token Creator relation instead of IAM policies, no real OAuth scopes or resources behind the
 * tokens it mints.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { type Clock, systemClock } from "../../../broker/clock.ts";

/** A service account the fake knows. */
export interface FakeServiceAccount {
  readonly email: string;
  /** Principals (caller identities or service account emails) with Token Creator on it. */
  readonly tokenCreators: readonly string[];
  /** Whether the org policy allowing lifetimes up to 12 h lists it; otherwise the cap is 1 h. */
  readonly lifetimeExtension?: boolean;
}

/** One access token the fake minted. */
export interface FakeMintedToken {
  readonly accessToken: string;
  readonly serviceAccount: string;
  /** The request's `name`, as the fake received it. */
  readonly name: string;
  readonly delegates: readonly string[];
  readonly scope: readonly string[];
  /** `lifetime` exactly as sent, e.g. `"600s"`. */
  readonly lifetime: string | undefined;
  readonly expireTime: Date;
  /** The `X-Goog-Request-Reason` header, which Google records in Cloud Audit Logs. */
  readonly requestReason: string | undefined;
  /** The Credential Access Boundary rules, when it came from STS. */
  readonly accessBoundary?: readonly unknown[];
  /** The token it was downscoped from, when it came from STS. */
  readonly sourceToken?: string;
}

/** A failure the next matching requests get instead of an answer. */
export interface FakeGcpFault {
  readonly endpoint: "generateAccessToken" | "sts";
  readonly httpStatus: number;
  /** Google's status name, e.g. `UNAVAILABLE`; for STS, the OAuth error code. */
  readonly status: string;
  readonly message?: string;
  /** How many requests it applies to; default 1. */
  readonly times?: number;
  /** Answer only after this long (a slow or hung Google). */
  readonly delayMs?: number;
}

const STATUS_BY_HTTP: Readonly<Record<number, string>> = {
  400: "INVALID_ARGUMENT",
  401: "UNAUTHENTICATED",
  403: "PERMISSION_DENIED",
  404: "NOT_FOUND",
  429: "RESOURCE_EXHAUSTED",
  500: "INTERNAL",
  503: "UNAVAILABLE",
};

const TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";

class GoogleHttpError extends Error {
  constructor(
    readonly httpStatus: number,
    message: string,
    readonly status = STATUS_BY_HTTP[httpStatus] ?? "UNKNOWN",
  ) {
    super(message);
  }
}

class OAuthHttpError extends Error {
  constructor(
    readonly httpStatus: number,
    readonly error: string,
    message: string,
  ) {
    super(message);
  }
}

export class FakeGcpServer {
  readonly #server: Server;
  readonly #accounts = new Map<string, FakeServiceAccount>();
  /** Bearer token → the caller identity it authenticates. */
  readonly #callers = new Map<string, string>();
  readonly #tokens = new Map<string, FakeMintedToken>();
  readonly #faults: (FakeGcpFault & { left: number })[] = [];
  /** Every request the fake received, for assertions on exact shapes. */
  readonly requests: { path: string; headers: IncomingMessage["headers"]; body: string }[] = [];

  private constructor(
    server: Server,
    readonly clock: Clock,
  ) {
    this.#server = server;
  }

  /** Starts the fake on 127.0.0.1 on a free port. */
  static async start(options: { clock?: Clock } = {}): Promise<FakeGcpServer> {
    let fake: FakeGcpServer | undefined;
    const server = createServer((request, response) => {
      void fake?.handle(request, response);
    });
    fake = new FakeGcpServer(server, options.clock ?? systemClock);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return fake;
  }

  /** `http://127.0.0.1:<port>` */
  get address(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  /** The STS token URL on this fake. */
  get stsEndpoint(): string {
    return `${this.address}/v1/token`;
  }

  /** Accepts `bearerToken` as the credentials of `principal`. */
  addCaller(bearerToken: string, principal: string): void {
    this.#callers.set(bearerToken, principal);
  }

  addServiceAccount(account: FakeServiceAccount): void {
    this.#accounts.set(account.email, account);
  }

  failNext(fault: FakeGcpFault): void {
    this.#faults.push({ ...fault, left: fault.times ?? 1 });
  }

  /** Every token minted so far, direct and downscoped. */
  minted(): FakeMintedToken[] {
    return [...this.#tokens.values()];
  }

  async stop(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    const url = new URL(request.url ?? "/", "http://fake");
    this.requests.push({ path: url.pathname, headers: request.headers, body });
    try {
      const generate = /^\/v1\/projects\/([^/]+)\/serviceAccounts\/([^/]+):generateAccessToken$/.exec(
        url.pathname,
      );
      if (request.method === "POST" && generate) {
        await this.injectFault("generateAccessToken");
        const answer = this.generateAccessToken(
          decodeURIComponent(generate[1] ?? ""),
          decodeURIComponent(generate[2] ?? ""),
          request,
          body,
        );
        return send(response, 200, answer);
      }
      if (request.method === "POST" && url.pathname === "/v1/token") {
        await this.injectFault("sts");
        return send(response, 200, this.exchangeToken(request, body));
      }
      throw new GoogleHttpError(404, `The requested URL ${url.pathname} was not found on this server.`);
    } catch (error) {
      if (error instanceof OAuthHttpError) {
        return send(response, error.httpStatus, { error: error.error, error_description: error.message });
      }
      if (error instanceof GoogleHttpError) {
        return send(response, error.httpStatus, {
          error: { code: error.httpStatus, message: error.message, status: error.status },
        });
      }
      return send(response, 500, { error: { code: 500, message: "fake failure", status: "INTERNAL" } });
    }
  }

  private async injectFault(endpoint: FakeGcpFault["endpoint"]): Promise<void> {
    const fault = this.#faults.find((candidate) => candidate.endpoint === endpoint && candidate.left > 0);
    if (!fault) return;
    fault.left -= 1;
    if (fault.delayMs) await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
    const message = fault.message ?? `injected ${fault.status}`;
    if (endpoint === "sts") throw new OAuthHttpError(fault.httpStatus, fault.status, message);
    throw new GoogleHttpError(fault.httpStatus, message, fault.status);
  }

  private generateAccessToken(
    project: string,
    accountId: string,
    request: IncomingMessage,
    rawBody: string,
  ): Record<string, unknown> {
    const caller = this.#callers.get(/^Bearer (.+)$/.exec(request.headers.authorization ?? "")?.[1] ?? "");
    if (!caller) {
      throw new GoogleHttpError(
        401,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
      );
    }
    if (project !== "-") {
      throw new GoogleHttpError(
        400,
        "The - wildcard character is required in the project of the resource name.",
      );
    }
    let body: { delegates?: unknown; scope?: unknown; lifetime?: unknown };
    try {
      body = JSON.parse(rawBody || "{}");
    } catch {
      throw new GoogleHttpError(400, "Invalid JSON payload received.");
    }
    const scope = body.scope;
    if (!Array.isArray(scope) || scope.length === 0 || !scope.every((entry) => typeof entry === "string")) {
      throw new GoogleHttpError(400, "Scope is required and must contain at least one value.");
    }
    const delegates = body.delegates ?? [];
    if (!Array.isArray(delegates) || !delegates.every((entry) => typeof entry === "string")) {
      throw new GoogleHttpError(400, "Invalid value at 'delegates'.");
    }
    const lifetime = body.lifetime;
    let lifetimeSeconds = 3600;
    if (lifetime !== undefined) {
      const match = typeof lifetime === "string" ? /^(\d+)(?:\.\d+)?s$/.exec(lifetime) : null;
      if (!match)
        throw new GoogleHttpError(
          400,
          "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration).",
        );
      lifetimeSeconds = Number(match[1]);
    }

    const target = this.#accounts.get(accountId);
    if (!target) throw new GoogleHttpError(404, `Requested entity was not found.`);
    // Each link of the chain needs Token Creator on the next: caller → delegates... → target.
    const chain: string[] = [];
    for (const delegate of delegates as string[]) {
      const delegateMatch = /^projects\/-\/serviceAccounts\/(.+)$/.exec(delegate);
      if (!delegateMatch)
        throw new GoogleHttpError(400, "Delegates must be of the form projects/-/serviceAccounts/{email}.");
      chain.push(delegateMatch[1] ?? "");
    }
    let principal = caller;
    for (const link of [...chain, target.email]) {
      const account = this.#accounts.get(link);
      if (!account) throw new GoogleHttpError(404, "Requested entity was not found.");
      if (!account.tokenCreators.includes(principal)) {
        throw new GoogleHttpError(
          403,
          `Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).`,
        );
      }
      principal = account.email;
    }
    const maxLifetime = target.lifetimeExtension ? 43_200 : 3_600;
    if (lifetimeSeconds < 1 || lifetimeSeconds > maxLifetime) {
      throw new GoogleHttpError(
        400,
        `The lifetime must be between 1s and ${maxLifetime}s; longer lifetimes need the constraints/iam.allowServiceAccountCredentialLifetimeExtension org policy.`,
      );
    }

    const accessToken = `ya29.fake-${randomBytes(24).toString("base64url")}`;
    const expireTime = new Date(Math.floor(this.clock.now() / 1000) * 1000 + lifetimeSeconds * 1000);
    this.#tokens.set(accessToken, {
      accessToken,
      serviceAccount: target.email,
      name: `projects/${project}/serviceAccounts/${accountId}`,
      delegates: delegates as string[],
      scope: scope as string[],
      lifetime: typeof lifetime === "string" ? lifetime : undefined,
      expireTime,
      requestReason: header(request, "x-goog-request-reason"),
    });
    return { accessToken, expireTime: expireTime.toISOString().replace(".000Z", "Z") };
  }

  private exchangeToken(request: IncomingMessage, rawBody: string): Record<string, unknown> {
    if (request.headers.authorization) {
      // The documentation says not to send one; it makes the request fail.
      throw new OAuthHttpError(400, "invalid_request", "The Authorization header must not be sent.");
    }
    if (!(request.headers["content-type"] ?? "").startsWith("application/x-www-form-urlencoded")) {
      throw new OAuthHttpError(400, "invalid_request", "Expected an application/x-www-form-urlencoded body.");
    }
    const form = new URLSearchParams(rawBody);
    if (form.get("grant_type") !== "urn:ietf:params:oauth:grant-type:token-exchange") {
      throw new OAuthHttpError(400, "unsupported_grant_type", "Unsupported grant_type.");
    }
    if (form.get("subject_token_type") !== TOKEN_TYPE || form.get("requested_token_type") !== TOKEN_TYPE) {
      throw new OAuthHttpError(400, "invalid_request", "Token types must be access tokens.");
    }
    const source = this.#tokens.get(form.get("subject_token") ?? "");
    const remainingMs = source ? source.expireTime.getTime() - this.clock.now() : 0;
    if (!source || remainingMs <= 0) {
      throw new OAuthHttpError(400, "invalid_grant", "The subject token is invalid or expired.");
    }
    if (source.accessBoundary) {
      throw new OAuthHttpError(
        400,
        "invalid_grant",
        "The subject token already carries security attributes.",
      );
    }
    let rules: unknown[];
    try {
      const parsed = JSON.parse(form.get("options") ?? "") as {
        accessBoundary?: { accessBoundaryRules?: unknown };
      };
      rules = parsed.accessBoundary?.accessBoundaryRules as unknown[];
      if (!Array.isArray(rules) || rules.length === 0 || rules.length > 10) throw new Error("rules");
      for (const rule of rules as { availableResource?: unknown; availablePermissions?: unknown }[]) {
        const permissions = rule.availablePermissions;
        if (
          typeof rule.availableResource !== "string" ||
          !Array.isArray(permissions) ||
          permissions.length === 0
        ) {
          throw new Error("rule");
        }
        if (
          !permissions.every(
            (permission) => typeof permission === "string" && permission.startsWith("inRole:"),
          )
        ) {
          throw new Error("permission");
        }
      }
    } catch {
      throw new OAuthHttpError(
        400,
        "invalid_request",
        "The options parameter must hold a valid accessBoundary.",
      );
    }
    const accessToken = `ya29.fake-bounded-${randomBytes(24).toString("base64url")}`;
    this.#tokens.set(accessToken, {
      ...source,
      accessToken,
      accessBoundary: rules,
      sourceToken: source.accessToken,
      requestReason: header(request, "x-goog-request-reason"),
    });
    return {
      access_token: accessToken,
      issued_token_type: TOKEN_TYPE,
      token_type: "Bearer",
      expires_in: Math.floor(remainingMs / 1000),
    };
  }
}

function header(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function send(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    "Content-Type": "application/json; charset=UTF-8",
    "Content-Length": Buffer.byteLength(text),
  });
  response.end(text);
}
