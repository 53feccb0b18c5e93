import type { Cluster, Redis } from "ioredis";
import { createLocalJWKSet, type JSONWebKeySet, type JWK, type JWTVerifyGetKey } from "jose";
import type { SigningKeyring } from "../../adapters/jwt/signing-keys.ts";
import type { Clock } from "../clock.ts";

interface KeyCache {
  jwks: JSONWebKeySet;
  verify: JWTVerifyGetKey;
  /** When Redis was read (monotonic ms: cache age is real time, whatever clock the broker runs on). */
  readAt: number;
}

interface Published {
  jwk: JWK;
  /** When the process holding the private key last said it is alive (ms). */
  seenAt: number;
}

/**
 * The public keys of every broker process, in Redis: each process publishes its own signing
 * keys (and keeps publishing while it runs), so credentials one broker signed verify at any
 * other — no shared key file needed — and `/.well-known/jwks.json` lists them all. A key
 * stays published for `keepSeconds` after its process was last seen, longer than any
 * credential it signed can live.
 */
export class PublishedKeys {
  #cache: KeyCache | undefined;
  #refreshing: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      /** The hash of published keys. */
      key: string;
      local: SigningKeyring;
      clock: Clock;
      keepSeconds: number;
      /** How often this process says it is alive, and re-reads others' keys. */
      refreshMs?: number;
    },
  ) {}

  /** Publishes this process's keys now and then every `refreshMs` (drops keys long unseen). */
  async start(): Promise<void> {
    await this.publish();
    this.#timer = setInterval(() => {
      this.publish().catch(() => undefined);
    }, this.deps.refreshMs ?? 60_000);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Every live broker's public keys. */
  async jwks(): Promise<JSONWebKeySet> {
    return (await this.current()).jwks;
  }

  /**
   * A jose key resolver over every broker's keys. A key id it does not know makes it read the
   * published keys again once (a broker that started a moment ago) before it fails.
   */
  readonly verifyKey: JWTVerifyGetKey = async (header, token) => {
    const cached = await this.current();
    try {
      return await cached.verify(header, token);
    } catch (error) {
      if (this.#cache && this.#cache.readAt > performance.now() - 1000) throw error;
      await this.refresh();
      return (await this.current()).verify(header, token);
    }
  };

  private async current(): Promise<KeyCache> {
    const refreshMs = this.deps.refreshMs ?? 60_000;
    if (!this.#cache || this.#cache.readAt < performance.now() - refreshMs / 2) await this.refresh();
    return this.#cache as KeyCache;
  }

  private refresh(): Promise<void> {
    this.#refreshing ??= (async () => {
      try {
        const now = this.deps.clock.now();
        const stored = await this.deps.redis.hgetall(this.deps.key);
        const keys = new Map<string, JWK>(
          this.deps.local.publicJwks().keys.map((jwk) => [jwk.kid as string, jwk]),
        );
        for (const [kid, raw] of Object.entries(stored)) {
          const published = JSON.parse(raw) as Published;
          if (published.seenAt >= now - this.deps.keepSeconds * 1000 && !keys.has(kid))
            keys.set(kid, published.jwk);
        }
        const jwks = { keys: [...keys.values()] };
        this.#cache = { jwks, verify: createLocalJWKSet(jwks), readAt: performance.now() };
      } finally {
        this.#refreshing = undefined;
      }
    })();
    return this.#refreshing;
  }

  private async publish(): Promise<void> {
    const now = this.deps.clock.now();
    const mine = this.deps.local.publicJwks().keys;
    const fields = mine.flatMap((jwk) => [
      jwk.kid as string,
      JSON.stringify({ jwk, seenAt: now } satisfies Published),
    ]);
    if (fields.length > 0) await this.deps.redis.hset(this.deps.key, ...fields);
    // Forget keys whose process has been gone longer than anything they signed can live.
    const stored = await this.deps.redis.hgetall(this.deps.key);
    const stale = Object.entries(stored)
      .filter(([, raw]) => (JSON.parse(raw) as Published).seenAt < now - this.deps.keepSeconds * 1000)
      .map(([kid]) => kid);
    if (stale.length > 0) await this.deps.redis.hdel(this.deps.key, ...stale);
    await this.refresh();
  }
}
