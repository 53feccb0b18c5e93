import type { Clock } from "../clock.ts";
import type { RedisClient, RedisKeys } from "../redis.ts";

const COUNT_SCRIPT = `
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {count, redis.call('GET', KEYS[2])}
`;

type CountingClient = RedisClient & {
  jitkeyCountWindow(current: string, previous: string, ttlMs: number): Promise<[number, string | null]>;
};

/**
 * Counts one event in the window `current` (kept `ttlMs`) and reads the window before it, in one
 * script call. The two keys must share a hash slot. One command rather than a MULTI: on a Redis
 * Cluster whose master stopped answering, ioredis could retry a MULTI without end, while a
 * single command fails after the command timeout like any other (a 503).
 */
export async function countInWindow(
  redis: RedisClient,
  current: string,
  previous: string,
  ttlMs: number,
): Promise<{ count: number; previous: number }> {
  if (!("jitkeyCountWindow" in redis))
    redis.defineCommand("jitkeyCountWindow", { numberOfKeys: 2, lua: COUNT_SCRIPT });
  const [count, before] = await (redis as CountingClient).jitkeyCountWindow(current, previous, ttlMs);
  return { count: Number(count), previous: Number(before ?? 0) };
}

/** Where a bucket stands against its limit. */
export interface LimitState {
  /** Events in the sliding window, estimated (see {@link SlidingWindowLimiter}). */
  readonly count: number;
  /** `count` has reached the limit: the next event would be over it. */
  readonly reached: boolean;
  /** `count` is over the limit. */
  readonly exceeded: boolean;
  /** Whole seconds until the estimate falls below the limit again (at least 1). */
  readonly retryAfterSeconds: number;
}

/**
 * Sliding-window limits in Redis, shared by every broker process. The count over the last
 * window is estimated from two fixed windows: the current one, plus the previous one weighted
 * by how much of it the sliding window still covers. A burst at a window boundary therefore
 * does not get a fresh budget, and each bucket costs two small counters that expire by
 * themselves, however many events it sees.
 */
export class SlidingWindowLimiter {
  constructor(
    private readonly redis: RedisClient,
    private readonly keys: RedisKeys,
    private readonly clock: Clock,
    private readonly windowMs = 60_000,
  ) {}

  /** Counts one event against `bucket` and says where it stands afterwards. */
  async hit(bucket: string, limit: number): Promise<LimitState> {
    const at = this.position();
    const current = this.key(bucket, at.window);
    const { count, previous } = await countInWindow(
      this.redis,
      current,
      this.key(bucket, at.window - 1),
      this.windowMs * 2,
    );
    return this.state(count, previous, limit, at.elapsed);
  }

  /** Where `bucket` stands, without counting anything. */
  async peek(bucket: string, limit: number): Promise<LimitState> {
    const at = this.position();
    const [current, previous] = await this.redis.mget(
      this.key(bucket, at.window),
      this.key(bucket, at.window - 1),
    );
    return this.state(Number(current ?? 0), Number(previous ?? 0), limit, at.elapsed);
  }

  private position(): { window: number; elapsed: number } {
    const now = this.clock.now();
    const window = Math.floor(now / this.windowMs);
    return { window, elapsed: now - window * this.windowMs };
  }

  /** Both windows of a bucket share a hash slot, so one MULTI may touch them on Redis Cluster. */
  private key(bucket: string, window: number): string {
    return this.keys.rateLimit(`{${bucket}}`, window);
  }

  private state(current: number, previous: number, limit: number, elapsed: number): LimitState {
    const w = this.windowMs;
    const count = previous * (1 - elapsed / w) + current;
    let waitMs: number;
    if (current < limit) {
      // Within this window: wait until the previous window's weight has shrunk enough.
      waitMs = previous > 0 ? w * (1 - (limit - current) / previous) - elapsed : 0;
    } else {
      // This window alone is at the limit: wait for the next one, and for this one's weight to shrink.
      waitMs = w - elapsed + w * (1 - limit / current);
    }
    return {
      count,
      reached: count >= limit,
      exceeded: count > limit,
      // At `waitMs` the estimate equals the limit, still reached: the answer is the next whole second.
      retryAfterSeconds: Math.max(1, Math.floor(waitMs / 1000) + 1),
    };
  }
}
