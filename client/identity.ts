import { readFile } from "node:fs/promises";
import { JitkeyClientError } from "./errors.ts";

/** A function the client calls before every request for the workload's identity JWT. */
export type IdentityTokenProvider = () => Promise<string>;

/** No identity token could be had: none configured, an unreadable file, a failed token endpoint. */
export class IdentityUnavailableError extends JitkeyClientError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("identity_unavailable", message, options);
  }
}

/**
 * Reads the token from a file on every call: Kubernetes projected service-account tokens and
 * SPIFFE JWT-SVIDs written by a helper are rotated in place, so a cached copy goes stale.
 */
export function identityTokenFromFile(path: string): IdentityTokenProvider {
  return async () => {
    let token: string;
    try {
      token = (await readFile(path, "utf8")).trim();
    } catch (error) {
      throw new IdentityUnavailableError(
        `cannot read identity token file ${path}: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
    if (!token) throw new IdentityUnavailableError(`identity token file ${path} is empty`);
    return token;
  };
}

/** Where the GitHub Actions runner hands out the job's OIDC token (`id-token: write`). */
export interface GitHubActionsTokenEndpoint {
  /** `ACTIONS_ID_TOKEN_REQUEST_URL`. */
  requestUrl: string;
  /** `ACTIONS_ID_TOKEN_REQUEST_TOKEN`. */
  requestToken: string;
  /** The `aud` to ask for: the broker's `identity.audience`. */
  audience: string;
}

/**
 * Fetches the job's OIDC token from the GitHub Actions runner, keeps it until a minute
 * before it expires, then fetches a new one (a job may wait for approval longer than a
 * token lives).
 */
export function githubActionsIdentityToken(endpoint: GitHubActionsTokenEndpoint): IdentityTokenProvider {
  let cached: { token: string; refreshAt: number } | undefined;
  return async () => {
    if (cached && Date.now() < cached.refreshAt) return cached.token;
    const url = new URL(endpoint.requestUrl);
    url.searchParams.set("audience", endpoint.audience);
    let response: Response;
    try {
      response = await fetch(url, {
        headers: { Authorization: `Bearer ${endpoint.requestToken}`, Accept: "application/json" },
        signal: AbortSignal.timeout(30_000),
      });
    } catch (error) {
      throw new IdentityUnavailableError(`cannot reach the GitHub Actions OIDC token endpoint`, {
        cause: error,
      });
    }
    if (!response.ok)
      throw new IdentityUnavailableError(
        `the GitHub Actions OIDC token endpoint answered HTTP ${response.status}`,
      );
    const body = (await response.json().catch(() => undefined)) as { value?: unknown } | undefined;
    if (typeof body?.value !== "string" || !body.value)
      throw new IdentityUnavailableError("the GitHub Actions OIDC token endpoint answered without a token");
    cached = { token: body.value, refreshAt: refreshTime(body.value) };
    return body.value;
  };
}

/** A minute before the token's `exp`; a minute from now when it has none or cannot be read. */
function refreshTime(jwt: string): number {
  try {
    const payload = JSON.parse(Buffer.from(jwt.split(".")[1] ?? "", "base64url").toString("utf8")) as {
      exp?: unknown;
    };
    if (typeof payload.exp === "number") return payload.exp * 1000 - 60_000;
  } catch {
    // Not a readable JWT: the broker will say so; just do not cache it for long.
  }
  return Date.now() + 60_000;
}

/** Which source `detectIdentityToken` chose, for messages. */
export type IdentitySourceKind = "file" | "github-actions" | "gitlab-ci" | "environment";

/** Explicit choices that take precedence over the environment. */
export interface IdentityOptions {
  /** A token file (Kubernetes projected token, SPIFFE JWT-SVID); else `JITKEY_IDENTITY_TOKEN_FILE`. */
  tokenFile?: string;
  /** The audience to ask GitHub Actions for; else `JITKEY_AUDIENCE`, else `jitkey`. */
  audience?: string;
}

/**
 * Finds the workload's identity token the way the `jitkey` CLI does, in this order:
 * a token file (`tokenFile` or `JITKEY_IDENTITY_TOKEN_FILE`), re-read on every request;
 * on GitHub Actions the job's OIDC token (`ACTIONS_ID_TOKEN_REQUEST_URL` and
 * `ACTIONS_ID_TOKEN_REQUEST_TOKEN`, present with `permissions: id-token: write`);
 * GitLab CI's `JITKEY_ID_TOKEN` (from `id_tokens:`); then `JITKEY_IDENTITY_TOKEN`.
 *
 * @throws IdentityUnavailableError when none is available.
 * @example
 * ```ts
 * const { provider } = detectIdentityToken(process.env);
 * const client = new JitkeyClient({ broker: process.env.JITKEY_URL!, identityToken: provider });
 * ```
 */
export function detectIdentityToken(
  env: Record<string, string | undefined>,
  options: IdentityOptions = {},
): { kind: IdentitySourceKind; provider: IdentityTokenProvider } {
  const file = options.tokenFile ?? env.JITKEY_IDENTITY_TOKEN_FILE;
  if (file) return { kind: "file", provider: identityTokenFromFile(file) };
  if (env.ACTIONS_ID_TOKEN_REQUEST_URL && env.ACTIONS_ID_TOKEN_REQUEST_TOKEN) {
    const endpoint = {
      requestUrl: env.ACTIONS_ID_TOKEN_REQUEST_URL,
      requestToken: env.ACTIONS_ID_TOKEN_REQUEST_TOKEN,
      audience: options.audience ?? env.JITKEY_AUDIENCE ?? "jitkey",
    };
    return { kind: "github-actions", provider: githubActionsIdentityToken(endpoint) };
  }
  const gitlab = env.JITKEY_ID_TOKEN;
  if (gitlab) return { kind: "gitlab-ci", provider: async () => gitlab };
  const plain = env.JITKEY_IDENTITY_TOKEN;
  if (plain) return { kind: "environment", provider: async () => plain };
  const hint =
    env.GITHUB_ACTIONS === "true"
      ? " On GitHub Actions, give the job `permissions: id-token: write`."
      : env.GITLAB_CI === "true"
        ? " On GitLab CI, declare `id_tokens: JITKEY_ID_TOKEN: {aud: ...}` in the job."
        : "";
  throw new IdentityUnavailableError(
    `no identity token: pass --identity-token-file, or set JITKEY_IDENTITY_TOKEN_FILE, JITKEY_ID_TOKEN or JITKEY_IDENTITY_TOKEN.${hint}`,
  );
}
