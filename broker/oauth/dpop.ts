import { createHash } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import { calculateJwkThumbprint, EmbeddedJWK, type JWK, errors as joseErrors, jwtVerify } from "jose";
import type { Clock } from "../clock.ts";
import { JitkeyError } from "../errors.ts";
import { AGENT_TOKEN_ALGORITHMS } from "../identity/agent-verifier.ts";
import type { RedisKeys } from "../redis.ts";

/** DPoP proofs may be signed with these (asymmetric only: `none` and HMAC prove no key). */
export const DPOP_ALGORITHMS: readonly string[] = AGENT_TOKEN_ALGORITHMS;

/** Longest proof read; a real one is well under 2 KiB. */
const MAX_PROOF_CHARS = 8192;

/**
 * A DPoP proof that does not hold (RFC 9449 §4.3): malformed, signed with a refused
 * algorithm, for another method or URL, too old or too new, replayed, or made with a key
 * other than the one the credential is bound to. `reason` is a fixed phrase, never proof content.
 */
export class InvalidDpopProofError extends JitkeyError {
  static override readonly code = "invalid_dpop_proof";
  readonly reason: string;
  constructor(reason: string) {
    super(`DPoP proof rejected: ${reason}`, 400, { reason });
    this.reason = reason;
  }
}

/** A proof that held: the thumbprint of the key that signed it. */
export interface VerifiedProof {
  /** RFC 7638 SHA-256 thumbprint (base64url) of the proof's public key: the `cnf.jkt` to bind to. */
  readonly jkt: string;
}

/** The request a proof must be for. */
export interface ProofTarget {
  /** `POST`, as the proof's `htm` must say. */
  readonly method: string;
  /** The broker's public URL of the route, without query: the proof's `htu`. */
  readonly url: string;
  /** A credential presented with the proof: when the proof has `ath`, it must be this token's hash. */
  readonly accessToken?: string;
}

/**
 * Checks DPoP proofs (RFC 9449 §4.3): a `dpop+jwt` signed with the public key in its own
 * `jwk` header, `htm` and `htu` naming this request, `iat` within the window of the broker's
 * clock, and a `jti` never seen before for that key (Redis `SET NX`, kept as long as a proof
 * could still pass the `iat` check, shared by every broker process). No server nonces.
 */
export class DpopVerifier {
  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      clock: Clock;
      /** `dpop.proofWindowSeconds`. */
      windowSeconds: number;
    },
  ) {}

  async verify(proof: string, target: ProofTarget): Promise<VerifiedProof> {
    // Node joins repeated headers with ", "; a compact JWS has no comma (RFC 9449 §4.3: one proof).
    if (proof.length > MAX_PROOF_CHARS || !/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(proof))
      throw new InvalidDpopProofError("not a single compact JWS");
    const now = this.deps.clock.now();
    let payload: Record<string, unknown>;
    let jwk: JWK;
    try {
      const verified = await jwtVerify(proof, EmbeddedJWK, {
        typ: "dpop+jwt",
        algorithms: [...DPOP_ALGORITHMS],
        currentDate: new Date(now),
      });
      payload = verified.payload;
      jwk = verified.protectedHeader.jwk as JWK;
    } catch (error) {
      throw new InvalidDpopProofError(describe(error));
    }
    const { jti, htm, htu, iat, ath } = payload;
    if (typeof jti !== "string" || jti.length === 0 || jti.length > 256)
      throw new InvalidDpopProofError("jti missing");
    if (htm !== target.method) throw new InvalidDpopProofError("htm does not match the request method");
    if (typeof htu !== "string" || normalUrl(htu) !== normalUrl(target.url))
      throw new InvalidDpopProofError("htu does not match the request URL");
    if (typeof iat !== "number" || !Number.isFinite(iat)) throw new InvalidDpopProofError("iat missing");
    if (Math.abs(now - iat * 1000) > this.deps.windowSeconds * 1000)
      throw new InvalidDpopProofError("iat outside the accepted window");
    if (ath !== undefined && (target.accessToken === undefined || ath !== hashOf(target.accessToken)))
      throw new InvalidDpopProofError("ath does not match the presented token");
    const jkt = await calculateJwkThumbprint(jwk, "sha256");
    // Checked last: a proof that fails any check above does not use up its jti.
    const fresh = await this.deps.redis.set(
      this.deps.keys.dpopProof(hashOf(`${jkt}\n${jti}`)),
      "1",
      "EX",
      this.deps.windowSeconds * 2 + 1,
      "NX",
    );
    if (fresh !== "OK") throw new InvalidDpopProofError("replayed: this jti was already used");
    return { jkt };
  }
}

/** base64url SHA-256, as `ath` and the replay key use it. */
function hashOf(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("base64url");
}

/** Scheme, host, port and path, as RFC 9449 compares `htu` (query and fragment ignored). */
function normalUrl(value: string): string | undefined {
  if (!URL.canParse(value)) return undefined;
  const url = new URL(value);
  return `${url.protocol}//${url.host}${url.pathname}`;
}

/** A fixed phrase per failure: jose's messages may quote the proof. */
function describe(error: unknown): string {
  if (error instanceof joseErrors.JOSEAlgNotAllowed) return "algorithm not allowed";
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) return "signature invalid";
  if (error instanceof joseErrors.JWTClaimValidationFailed)
    return error.claim === "typ"
      ? "typ is not dpop+jwt"
      : `claim ${String(error.claim).slice(0, 16)} invalid`;
  if (error instanceof joseErrors.JWTExpired) return "expired";
  if (error instanceof joseErrors.JWSInvalid) return "jwk header missing, private or unusable";
  return "malformed";
}
