import { expect } from "chai";
import type { Redis } from "ioredis";
import { ManualClock } from "../../broker/clock.ts";
import { SlidingWindowLimiter } from "../../broker/http/rate-limiter.ts";
import { RedisKeys } from "../../broker/redis.ts";
import { deletePrefix, testRedis, uniquePrefix } from "../helpers/redis.ts";

describe("sliding-window limiter", () => {
  let redis: Redis;
  let prefix: string;
  let clock: ManualClock;
  let limiter: SlidingWindowLimiter;

  beforeEach(() => {
    redis = testRedis();
    prefix = uniquePrefix("limiter");
    // The start of a minute, so the test knows where window boundaries fall.
    clock = new ManualClock(Math.ceil(Date.now() / 60_000) * 60_000);
    limiter = new SlidingWindowLimiter(redis, new RedisKeys(prefix), clock);
  });
  afterEach(async () => {
    await deletePrefix(redis, prefix);
    redis.disconnect();
  });

  it("allows the limit, says when it is reached, and refuses past it", async () => {
    const states = [];
    for (let i = 0; i < 4; i++) states.push(await limiter.hit("b", 3));
    expect(states.map((s) => s.reached)).to.deep.equal([false, false, true, true]);
    expect(states.map((s) => s.exceeded)).to.deep.equal([false, false, false, true]);
    expect((await limiter.peek("b", 3)).reached).to.equal(true);
    expect((await limiter.peek("other", 3)).reached).to.equal(false);
  });

  it("gives a burst at the end of one minute no fresh budget at the start of the next", async () => {
    clock.advance(59_000);
    for (let i = 0; i < 3; i++) await limiter.hit("b", 3);
    clock.advance(2_000);
    // A fixed window would allow three more here; the sliding one has room for none.
    expect((await limiter.peek("b", 3)).count).to.be.closeTo(3 * (59 / 60), 0.01);
    expect((await limiter.hit("b", 3)).exceeded).to.equal(true);
  });

  it("frees the budget once the sliding window has passed, and Retry-After says when", async () => {
    for (let i = 0; i < 3; i++) await limiter.hit("b", 3);
    const limited = await limiter.peek("b", 3);
    expect(limited.reached).to.equal(true);
    clock.advance((limited.retryAfterSeconds - 1) * 1000);
    expect((await limiter.peek("b", 3)).reached, "still limited a second early").to.equal(true);
    clock.advance(1000);
    expect((await limiter.peek("b", 3)).reached).to.equal(false);
    clock.advance(120_000);
    expect((await limiter.peek("b", 3)).count).to.equal(0);
  });

  it("keeps two small expiring counters per bucket, however many events it counts", async () => {
    for (let i = 0; i < 200; i++) await limiter.hit("busy", 10);
    clock.advance(60_000);
    await limiter.hit("busy", 10);
    const keys = await redis.keys(`${prefix}:*`);
    expect(keys).to.have.length(2);
    for (const key of keys) {
      const ttl = await redis.pttl(key);
      expect(ttl).to.be.within(1, 120_000);
    }
  });
});
