import { expect } from "chai";
import { LockTimeoutError, RedisLocks } from "../../broker/locks.ts";
import { testRedis, uniquePrefix } from "../helpers/redis.ts";

describe("Redis locks", () => {
  const redis = testRedis();
  const prefix = uniquePrefix("locks");
  after(async () => {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
  });

  it("serialises read-modify-write across holders so no update is lost", async () => {
    const locks = [0, 1, 2].map(() => new RedisLocks(redis, (name) => `${prefix}:${name}`));
    let shared = 0;
    await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        locks[i % 3]?.withLock("doc", async () => {
          const read = shared;
          await new Promise((resolve) => setTimeout(resolve, 1));
          shared = read + 1;
        }),
      ),
    );
    expect(shared).to.equal(30);
    expect(await redis.exists(`${prefix}:doc`)).to.equal(0);
  });

  it("gives up with LockTimeoutError when the lock stays busy, and frees it after a holder throws", async () => {
    const locks = new RedisLocks(redis, (name) => `${prefix}:${name}`, { waitMs: 100 });
    let release: () => void = () => {};
    const holding = locks.withLock("busy", () => new Promise<void>((resolve) => (release = resolve)));
    await new Promise((resolve) => setTimeout(resolve, 20));
    let error: unknown;
    await locks.withLock("busy", async () => undefined).catch((e: unknown) => (error = e));
    expect(error).to.be.instanceOf(LockTimeoutError);
    release();
    await holding;
    await locks
      .withLock("busy", async () => {
        throw new Error("boom");
      })
      .catch(() => undefined);
    expect(await locks.withLock("busy", async () => "free")).to.equal("free");
  });
});
