import { createHash } from "node:crypto";
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
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

/** The most a remote JWKS answer may hold; a larger one is refused before it is parsed. */
export const JWKS_MAX_BYTES = 1024 * 1024;

/**
 * An identity token that did not verify. Every field is bounded and safe to log and audit:
 * `reason` is one of a few fixed phrases, `issuer` is a configured issuer's name, and an
 * issuer nobody configured appears only as `issuerDigest`, so a token cannot make the
 * broker store what it carries.
 */
export class IdentityRejectedError extends UnauthenticatedError {
  readonly reason: string;
  readonly issuer: string | undefined;
  readonly issuerDigest: string | undefined;
  constructor(reason: string, issuer?: string, issuerDigest?: string) {
    super(`identity token rejected: ${reason}`);
    this.reason = reason;
    this.issuer = issuer;
    this.issuerDigest = issuerDigest;
  }
}

/** A short, stable stand-in for an unverified value: correlates repeats, stores nothing of it. */
export function digestOf(value: string): string {
  return `sha256:${createHash("sha256").update(value, "utf8").digest("hex").slice(0, 16)}`;
}

/** The issuer's key endpoint answered too much, or not JSON-sized at all. */
class JwksTooLargeError extends Error {
  constructor() {
    super(`JWKS answer is over ${JWKS_MAX_BYTES} bytes`);
    this.name = "JwksTooLargeError";
  }
}

/**
 * `fetch` for jose's remote key sets that stops reading past {@link JWKS_MAX_BYTES}: a huge
 * answer costs one issuer a failed fetch, not the broker its memory and event loop.
 */
async function fetchCappedJwks(url: string, init: RequestInit): Promise<Response> {
  const response = await fetch(url, init);
  if (Number(response.headers.get("content-length") ?? 0) > JWKS_MAX_BYTES) {
    await response.body?.cancel();
    throw new JwksTooLargeError();
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (response.body) {
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > JWKS_MAX_BYTES) {
        await reader.cancel();
        throw new JwksTooLargeError();
      }
      chunks.push(value);
    }
  }
  return new Response(Buffer.concat(chunks), { status: response.status, headers: response.headers });
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
        : // jose caches the remote set, refetches on an unknown kid at most every 30 s, and shares
          // one fetch among concurrent requests: a slow endpoint holds up only this issuer's agents.
          createRemoteJWKSet(new URL(issuer.jwksUri as string), {
            cooldownDuration: 30_000,
            cacheMaxAge: 600_000,
            timeoutDuration: Math.round((identity.jwksTimeoutSeconds ?? 5) * 1000),
            [customFetch]: fetchCappedJwks,
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
    if (!issuer) {
      throw new IdentityRejectedError(
        "untrusted issuer",
        undefined,
        typeof unverifiedIssuer === "string" ? digestOf(unverifiedIssuer) : undefined,
      );
    }
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

/** A fixed phrase per failure: what jose reports may quote the token, so none of it is passed on. */
function describeJoseError(error: unknown): string {
  if (error instanceof joseErrors.JWTExpired) return "token expired";
  if (error instanceof joseErrors.JWTClaimValidationFailed) {
    // jose names only registered claims here; the cap keeps it so whatever a later version does.
    return `claim ${String(error.claim).slice(0, 32)} invalid`;
  }
  if (error instanceof joseErrors.JOSEAlgNotAllowed) return "algorithm not allowed";
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) return "signature invalid";
  if (error instanceof joseErrors.JWKSNoMatchingKey) return "no matching key";
  if (error instanceof joseErrors.JWKSTimeout) return "issuer keys timed out";
  if (error instanceof JwksTooLargeError) return "issuer keys too large";
  if (error instanceof joseErrors.JWKSInvalid || error instanceof TypeError) return "issuer keys unavailable";
  if (error instanceof joseErrors.JOSEError) {
    // jose's generic error is what a non-200 or non-JSON key endpoint raises.
    return error.code === "ERR_JOSE_GENERIC" ? "issuer keys unavailable" : error.code;
  }
  return "verification failed";
}
