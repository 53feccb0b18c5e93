import { randomBytes } from "node:crypto";
import type { RedisClient } from "./redis.ts";

// Deletes the lock only if this holder still owns it: a holder that outlived its lease must
// never release a lock someone else has taken since.
const RELEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/** Thrown when a lock could not be taken in time. Transient: the caller may retry. */
export class LockTimeoutError extends Error {
  constructor(name: string) {
    super(`lock ${name} is busy`);
    this.name = "LockTimeoutError";
  }
}

/**
 * Named mutual-exclusion locks shared by every broker and worker process, on Redis
 * (`SET NX PX` with an owner token, released by compare-and-delete). A holder that dies
 * loses the lock when its lease runs out.
 */
export class RedisLocks {
  constructor(
    private readonly redis: RedisClient,
    private readonly keyOf: (name: string) => string,
    private readonly options: { leaseMs?: number; waitMs?: number } = {},
  ) {}

  /** Runs `fn` while holding `name`; waits up to `waitMs` for it. */
  async withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const key = this.keyOf(name);
    const owner = randomBytes(12).toString("base64url");
    const leaseMs = this.options.leaseMs ?? 30_000;
    const deadline = Date.now() + (this.options.waitMs ?? 10_000);
    for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
      if ((await this.redis.set(key, owner, "PX", leaseMs, "NX")) === "OK") break;
      if (Date.now() >= deadline) throw new LockTimeoutError(name);
      await new Promise((resolve) => setTimeout(resolve, delay + Math.random() * delay));
    }
    try {
      return await fn();
    } finally {
      await this.redis.eval(RELEASE_SCRIPT, 1, key, owner).catch(() => undefined);
    }
  }
}
