import { redactSecrets } from "../adapter-error-text.ts";
import { GcpAdapterError, toAdapterError } from "./gcp-errors.ts";
import type { AccessBoundaryRule } from "./gcp-options.ts";

const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";

/** A downscoped token and, when STS said, how many seconds it lives. */
export interface BoundedToken {
  readonly accessToken: string;
  readonly expiresInSeconds: number | undefined;
}

/**
 * Exchanges `sourceToken` for a token limited by a Credential Access Boundary, through the STS
 * token exchange (RFC 8693; `POST https://sts.googleapis.com/v1/token`, form-encoded, the
 * boundary JSON in `options`). No Authorization header: STS authenticates the subject token.
 *
 * Why not google-auth-library's `DownscopedClient`, which does the same exchange: it derives the
 * STS URL from the universe domain (always https), so it cannot be pointed at a test fake or a
 * proxy, and it caches and refreshes a token the broker only ever uses once.
 */
export async function exchangeForBoundedToken(options: {
  endpoint: string;
  sourceToken: string;
  rules: readonly AccessBoundaryRule[];
  timeoutMs: number;
  headers: Readonly<Record<string, string>>;
}): Promise<BoundedToken> {
  const secrets = [options.sourceToken];
  const body = new URLSearchParams({
    grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
    subject_token_type: ACCESS_TOKEN_TYPE,
    requested_token_type: ACCESS_TOKEN_TYPE,
    subject_token: options.sourceToken,
    options: JSON.stringify({ accessBoundary: { accessBoundaryRules: options.rules } }),
  });
  let response: Response;
  let answer: Record<string, unknown>;
  try {
    response = await fetch(options.endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", ...options.headers },
      body,
      signal: AbortSignal.timeout(options.timeoutMs),
    });
    answer = (await response.json().catch(() => ({}))) as Record<string, unknown>;
  } catch (error) {
    if ((error as Error).name === "TimeoutError") {
      throw new GcpAdapterError("GCP STS token exchange timed out", { permanent: false });
    }
    throw toAdapterError(error, "STS token exchange", secrets);
  }
  if (!response.ok) {
    // STS answers OAuth-style errors: {"error": "invalid_grant", "error_description": "..."}.
    const reason = [answer.error, answer.error_description]
      .filter((part) => typeof part === "string")
      .join(": ");
    const transient = response.status >= 500 || response.status === 429;
    throw new GcpAdapterError(
      `GCP STS token exchange failed (HTTP ${response.status}): ${redactSecrets(reason || "no error text", secrets).slice(0, 500)}`,
      { permanent: !transient, status: typeof answer.error === "string" ? answer.error : undefined },
    );
  }
  if (typeof answer.access_token !== "string" || answer.access_token.length === 0) {
    throw new GcpAdapterError("GCP STS token exchange returned no access_token", { permanent: false });
  }
  return {
    accessToken: answer.access_token,
    expiresInSeconds: typeof answer.expires_in === "number" ? answer.expires_in : undefined,
  };
}
