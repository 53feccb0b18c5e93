import { OAuthError } from "./oauth-error.ts";

export const TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange";
export const TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt";
export const TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token";
export const TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token";
export const JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/** Longest token read from a form (a JWT is far shorter). */
const MAX_TOKEN_CHARS = 16_384;
/** RFC 6749 §3.3 scope-token characters. */
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]{1,128}$/;

/** A token exchange request (RFC 8693 §2.1), parsed and checked for form, not yet for meaning. */
export interface ExchangeRequest {
  subjectToken: string;
  actorToken?: string;
  /** Requested scopes; absent means the parent's. */
  scopes?: string[];
  /** RFC 8707 resource indicators (absolute URIs). */
  resources: string[];
  /** Logical names of the target (a resource name or its audience). */
  audiences: string[];
  /** The `issued_token_type` to answer with. */
  issuedTokenType: string;
  /** `requested_ttl`: the longest the new credential may live, in seconds. */
  requestedTtlSeconds?: number;
  /** `dpop_jkt` (RFC 9449 §10): bind the new credential to this key thumbprint instead of the proof's. */
  dpopJkt?: string;
}

/** How the caller authenticated in the form (RFC 7523 §2.2), if it did. */
export interface ClientAssertion {
  assertion: string;
  clientId?: string;
}

type Form = Record<string, unknown>;

/** One parameter, at most once (RFC 6749 §3.2: parameters must not repeat). */
function single(form: Form, name: string, maxChars = 512): string | undefined {
  const value = form[name];
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw new OAuthError("invalid_request", `${name} is given more than once`);
  if (value.length > maxChars) throw new OAuthError("invalid_request", `${name} is too long`);
  return value;
}

/** A parameter RFC 8693 lets repeat (`resource`, `audience`). */
function multiple(form: Form, name: string): string[] {
  const value = form[name];
  const values = value === undefined ? [] : Array.isArray(value) ? value : [value];
  if (values.length > 8 || values.some((item) => typeof item !== "string" || item.length > 512))
    throw new OAuthError("invalid_request", `${name} is malformed`);
  return values as string[];
}

/** The caller's RFC 7523 client assertion, if the form carries one. */
export function clientAssertionOf(form: Form): ClientAssertion | undefined {
  const type = single(form, "client_assertion_type");
  const assertion = single(form, "client_assertion", MAX_TOKEN_CHARS);
  const clientId = single(form, "client_id");
  if (type === undefined && assertion === undefined) return undefined;
  if (type !== JWT_BEARER_ASSERTION || !assertion)
    throw new OAuthError(
      "invalid_client",
      `client_assertion_type must be ${JWT_BEARER_ASSERTION}, with a client_assertion`,
    );
  return { assertion, ...(clientId ? { clientId } : {}) };
}

/** Parses a token exchange form; {@link OAuthError} names what is wrong. */
export function parseExchangeRequest(form: Form): ExchangeRequest {
  const grantType = single(form, "grant_type");
  if (!grantType) throw new OAuthError("invalid_request", "grant_type is required");
  if (grantType !== TOKEN_EXCHANGE_GRANT)
    throw new OAuthError("unsupported_grant_type", `only ${TOKEN_EXCHANGE_GRANT} is supported`);

  const subjectToken = single(form, "subject_token", MAX_TOKEN_CHARS);
  const subjectTokenType = single(form, "subject_token_type");
  if (!subjectToken || !subjectTokenType)
    throw new OAuthError("invalid_request", "subject_token and subject_token_type are required");
  if (subjectTokenType !== TOKEN_TYPE_JWT && subjectTokenType !== TOKEN_TYPE_ACCESS_TOKEN)
    throw new OAuthError("invalid_request", `subject_token_type must be ${TOKEN_TYPE_JWT}`);

  const actorToken = single(form, "actor_token", MAX_TOKEN_CHARS);
  const actorTokenType = single(form, "actor_token_type");
  if ((actorToken === undefined) !== (actorTokenType === undefined) || actorToken === "")
    throw new OAuthError("invalid_request", "actor_token and actor_token_type go together");
  if (
    actorTokenType !== undefined &&
    actorTokenType !== TOKEN_TYPE_JWT &&
    actorTokenType !== TOKEN_TYPE_ID_TOKEN
  )
    throw new OAuthError("invalid_request", `actor_token_type must be ${TOKEN_TYPE_JWT}`);

  const scope = single(form, "scope", 4096);
  let scopes: string[] | undefined;
  if (scope !== undefined) {
    scopes = [...new Set(scope.split(" ").filter((token) => token.length > 0))];
    if (scopes.length === 0 || scopes.length > 32 || !scopes.every((token) => SCOPE_TOKEN.test(token)))
      throw new OAuthError("invalid_scope", "scope must be one to 32 space-separated scope tokens");
  }

  const resources = multiple(form, "resource");
  for (const resource of resources) {
    // RFC 8707 §2: an absolute URI without a fragment.
    if (!URL.canParse(resource) || resource.includes("#"))
      throw new OAuthError("invalid_target", "resource must be an absolute URI without a fragment");
  }
  const audiences = multiple(form, "audience");

  const requestedTokenType = single(form, "requested_token_type");
  if (
    requestedTokenType !== undefined &&
    requestedTokenType !== TOKEN_TYPE_JWT &&
    requestedTokenType !== TOKEN_TYPE_ACCESS_TOKEN
  )
    throw new OAuthError("invalid_request", `requested_token_type must be ${TOKEN_TYPE_JWT}`);

  const ttl = single(form, "requested_ttl");
  if (ttl !== undefined && !/^[1-9][0-9]{0,8}$/.test(ttl))
    throw new OAuthError("invalid_request", "requested_ttl must be a positive whole number of seconds");

  const dpopJkt = single(form, "dpop_jkt");
  if (dpopJkt !== undefined && !/^[A-Za-z0-9_-]{43}$/.test(dpopJkt))
    throw new OAuthError("invalid_request", "dpop_jkt must be a base64url SHA-256 JWK thumbprint");

  return {
    subjectToken,
    ...(actorToken ? { actorToken } : {}),
    ...(scopes ? { scopes } : {}),
    resources,
    audiences,
    issuedTokenType: requestedTokenType ?? TOKEN_TYPE_JWT,
    ...(ttl ? { requestedTtlSeconds: Number(ttl) } : {}),
    ...(dpopJkt ? { dpopJkt } : {}),
  };
}
