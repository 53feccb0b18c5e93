import { hash } from "node:crypto";
import { decodeJwt } from "jose";
import { setBounded } from "../bounded-map.ts";
import type { Clock } from "../clock.ts";
import type { AgentPrincipal } from "./principal.ts";

/** Anything that turns an identity token into the agent it names, or throws. */
export interface IdentityVerifier {
  verify(token: string): Promise<AgentPrincipal>;
}

interface Entry {
  agent: AgentPrincipal;
  /** Until when (ms) the earlier verification stands for this exact token. */
  until: number;
}

/**
 * Remembers identity tokens that verified, by their SHA-256, so an agent's next request with
 * the same token skips the signature check (the costliest step of a mint). An entry stands
 * until the token's own `exp` or maximum age, and never longer than `windowMs` after it was
 * checked: a key the issuer withdraws stops being trusted within that window. Bounded: the
 * oldest entries go first.
 */
export class VerifiedIdentities implements IdentityVerifier {
  readonly #entries = new Map<string, Entry>();

  constructor(
    private readonly verifier: IdentityVerifier,
    private readonly options: {
      clock: Clock;
      /** `identity.maxTokenAgeSeconds`: a token older than this by `iat` is re-checked (and refused). */
      maxTokenAgeSeconds: number;
      windowMs?: number;
      maxEntries?: number;
    },
  ) {}

  async verify(token: string): Promise<AgentPrincipal> {
    const now = this.options.clock.now();
    const key = hash("sha256", token, "base64url");
    const entry = this.#entries.get(key);
    if (entry && entry.until > now) return entry.agent;
    if (entry) this.#entries.delete(key);
    const agent = await this.verifier.verify(token);
    // It verified, so these claims are the issuer's; both are required by the verifier.
    const { exp = 0, iat = 0 } = decodeJwt(token);
    const until = Math.min(
      exp * 1000,
      (iat + this.options.maxTokenAgeSeconds) * 1000,
      now + (this.options.windowMs ?? 60_000),
    );
    if (until > now) this.remember(key, { agent, until });
    return agent;
  }

  private remember(key: string, entry: Entry): void {
    setBounded(this.#entries, key, entry, this.options.maxEntries ?? 10_000);
  }
}
