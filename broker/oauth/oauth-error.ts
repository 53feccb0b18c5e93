/** Error codes the token endpoint answers with (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707, RFC 9449 §5). */
export const OAUTH_ERROR_CODES = [
  "invalid_request",
  "invalid_client",
  "invalid_grant",
  "invalid_scope",
  "invalid_target",
  "unsupported_grant_type",
  "invalid_dpop_proof",
] as const;
export type OAuthErrorCode = (typeof OAUTH_ERROR_CODES)[number];

/**
 * A token endpoint error, answered in the OAuth shape `{error, error_description}` rather
 * than the jitkey error shape: 400, or 401 for `invalid_client`. The description is a fixed
 * or broker-made phrase, never token content.
 */
export class OAuthError extends Error {
  readonly status: 400 | 401;
  constructor(
    readonly error: OAuthErrorCode,
    readonly description: string,
  ) {
    super(`${error}: ${description}`);
    this.name = this.constructor.name;
    this.status = error === "invalid_client" ? 401 : 400;
  }
}
