import type { Redis } from "ioredis";
import type { Clock } from "../clock.ts";
import { RateLimitedError } from "../errors.ts";
import type { RedisKeys } from "../redis.ts";

/** Fixed one-minute windows in Redis, shared by every broker process. */
export class RateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly clock: Clock,
  ) {}

  /** Counts a request against `bucket`; throws `rate_limited` past `limit` a minute. */
  async hit(bucket: string, limit: number): Promise<void> {
    const { key, retryAfter } = this.window(bucket);
    const [[, count]] = (await this.redis.multi().incr(key).expire(key, 120).exec()) as [[null, number]];
    if (count > limit) throw new RateLimitedError(retryAfter);
  }

  /** Throws `rate_limited` if `bucket` is already past `limit` this minute, without counting. */
  async check(bucket: string, limit: number): Promise<void> {
    const { key, retryAfter } = this.window(bucket);
    if (Number((await this.redis.get(key)) ?? 0) >= limit) throw new RateLimitedError(retryAfter);
  }

  private window(bucket: string): { key: string; retryAfter: number } {
    const now = this.clock.now();
    const window = Math.floor(now / 60_000);
    return {
      key: this.keys.rateLimit(bucket, window),
      retryAfter: Math.max(1, Math.ceil(((window + 1) * 60_000 - now) / 1000)),
    };
  }
}
