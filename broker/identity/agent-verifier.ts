import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeJwt,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
  errors as joseErrors,
  jwtVerify,
} from "jose";
import type { Config, IssuerConfig } from "../config.ts";
import { UnauthenticatedError } from "../errors.ts";
import { type AgentClaims, type AgentPrincipal, type ClaimValue, withClaims } from "./principal.ts";

/** Asymmetric algorithms only: `none` and HMAC can never verify an agent. */
export const AGENT_TOKEN_ALGORITHMS = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
  "Ed25519",
];

/** An identity token that did not verify; `reason` is safe to log and audit. */
export class IdentityRejectedError extends UnauthenticatedError {
  readonly reason: string;
  readonly issuer: string | undefined;
  constructor(reason: string, issuer?: string) {
    super(`identity token rejected: ${reason}`);
    this.reason = reason;
    this.issuer = issuer;
  }
}

/** Bounds on the claims an agent carries into policy: what a token can make the broker hold. */
export const CLAIM_LIMITS = {
  /** Claims kept per token. */
  count: 64,
  /** Characters of one string claim, or of one element of a string-array claim. */
  stringLength: 1024,
  /** Elements of one string-array claim. */
  arrayLength: 64,
  /** Characters of all kept claims together, as JSON. */
  totalLength: 8192,
} as const;

/** Per-token claims that say nothing about the workload, only about this token. */
const TOKEN_ONLY_CLAIMS = new Set(["exp", "iat", "nbf", "jti"]);

/**
 * The claims of a verified payload that policy may match: strings, finite numbers, booleans
 * and string arrays, within {@link CLAIM_LIMITS}. Anything else (objects, mixed arrays,
 * oversized values, claims past the limits) is left out, which makes a rule that names it
 * not apply: a dropped claim can only take permissions away.
 */
export function boundClaims(payload: Record<string, unknown>): AgentClaims {
  const kept: Record<string, ClaimValue> = {};
  let count = 0;
  let total = 2;
  for (const [name, value] of Object.entries(payload)) {
    if (TOKEN_ONLY_CLAIMS.has(name) || name.length > 64) continue;
    const claim = claimValue(value);
    if (claim === undefined) continue;
    const size = JSON.stringify(name).length + JSON.stringify(claim).length + 2;
    if (count >= CLAIM_LIMITS.count || total + size > CLAIM_LIMITS.totalLength) continue;
    kept[name] = claim;
    count += 1;
    total += size;
  }
  return kept;
}

function claimValue(value: unknown): ClaimValue | undefined {
  if (typeof value === "string") return value.length <= CLAIM_LIMITS.stringLength ? value : undefined;
  if (typeof value === "boolean") return value;
  if (typeof value === "number") return Number.isFinite(value) ? value : undefined;
  if (
    Array.isArray(value) &&
    value.length <= CLAIM_LIMITS.arrayLength &&
    value.every((item) => typeof item === "string" && item.length <= CLAIM_LIMITS.stringLength)
  ) {
    return Object.freeze([...(value as string[])]);
  }
  return undefined;
}

/** Does a bearer token look like a JWS compact serialization? */
export function looksLikeJwt(token: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(token);
}

/**
 * Verifies workload identity JWTs on every request: signature against the issuer's keys,
 * `iss`, `aud`, `exp`, `nbf`/`iat` with a small clock skew, and token age.
 */
export class AgentVerifier {
  readonly #issuers = new Map<string, { config: IssuerConfig; keys: JWTVerifyGetKey }>();

  constructor(
    private readonly identity: Config["identity"],
    private readonly now: () => number = Date.now,
  ) {
    for (const issuer of identity.issuers) {
      const keys = issuer.jwks
        ? createLocalJWKSet(issuer.jwks as unknown as JSONWebKeySet)
        : // jose caches the remote set and refetches on an unknown kid, at most every 30 s.
          createRemoteJWKSet(new URL(issuer.jwksUri as string), {
            cooldownDuration: 30_000,
            cacheMaxAge: 600_000,
          });
      this.#issuers.set(issuer.issuer, { config: issuer, keys });
    }
  }

  /** Verifies `token` and returns the agent it names. Throws {@link IdentityRejectedError}. */
  async verify(token: string): Promise<AgentPrincipal> {
    let unverifiedIssuer: string | undefined;
    try {
      unverifiedIssuer = decodeJwt(token).iss;
    } catch {
      throw new IdentityRejectedError("malformed token");
    }
    const issuer = unverifiedIssuer ? this.#issuers.get(unverifiedIssuer) : undefined;
    if (!issuer) throw new IdentityRejectedError("untrusted issuer", unverifiedIssuer);
    try {
      const { payload } = await jwtVerify(token, issuer.keys, {
        issuer: issuer.config.issuer,
        audience: this.identity.audience,
        algorithms: AGENT_TOKEN_ALGORITHMS,
        clockTolerance: this.identity.clockSkewSeconds,
        maxTokenAge: this.identity.maxTokenAgeSeconds,
        requiredClaims: ["exp", "iat"],
        currentDate: new Date(this.now()),
      });
      const claim = payload[issuer.config.agentIdClaim];
      if (typeof claim !== "string" || claim.length === 0) {
        throw new IdentityRejectedError(`claim ${issuer.config.agentIdClaim} missing`, issuer.config.name);
      }
      return withClaims(
        {
          kind: "agent",
          id: `${issuer.config.name}:${claim}`,
          issuer: issuer.config.name,
          owner: issuer.config.owner,
        },
        boundClaims(payload),
      );
    } catch (error) {
      if (error instanceof IdentityRejectedError) throw error;
      throw new IdentityRejectedError(describeJoseError(error), issuer.config.name);
    }
  }
}

function describeJoseError(error: unknown): string {
  if (error instanceof joseErrors.JWTExpired) return "token expired";
  if (error instanceof joseErrors.JWTClaimValidationFailed)
    return `claim ${error.claim} invalid: ${error.reason}`;
  if (error instanceof joseErrors.JOSEAlgNotAllowed) return "algorithm not allowed";
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) return "signature invalid";
  if (error instanceof joseErrors.JWKSNoMatchingKey) return "no matching key";
  if (error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JOSEError) {
    return (error as joseErrors.JOSEError).code;
  }
  return "verification failed";
}
