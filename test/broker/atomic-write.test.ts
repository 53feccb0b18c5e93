import { expect } from "chai";
import { LiveEvents } from "../../broker/events/live-events.ts";
import { RecordChanges } from "../../broker/events/record-changes.ts";
import { createLogger } from "../../broker/logger.ts";
import { RedisKeys } from "../../broker/redis.ts";
import { AtomicWrite, AtomicWriter, WRITES_PER_CALL } from "../../broker/store/atomic-write.ts";
import { deletePrefix, eventually, testRedis, uniquePrefix } from "../helpers/redis.ts";

describe("atomic writes: a change, its indexes and its audit events together, or nothing", () => {
  const redis = testRedis();
  const prefix = uniquePrefix("atomic");
  const keys = new RedisKeys(prefix, "default", 4);
  const shard = keys.shard(1);
  const writer = new AtomicWriter(redis, { retentionMs: 3_600_000, channel: `${prefix}:events` });
  const event = (json: object, indexKeys: string[] = [], publish = false) => ({
    json: JSON.stringify(json),
    indexKeys,
    publish,
  });
  after(async () => {
    await deletePrefix(redis, prefix);
    redis.disconnect();
  });

  it("applies a guarded patch with its index writes and events, returning the record after", async () => {
    await redis.set(shard.lease("a"), JSON.stringify({ id: "a", status: "active", round: 1 }));
    const write = new AtomicWrite(shard)
      .guard(shard.lease("a"), ["active"], { equals: { round: 1 } })
      .patch({ status: "revoked", revokedAt: "2026-01-01T00:00:00.000Z" }, { expiry: { seconds: 60 } })
      .zrem(shard.liveLeases, "a")
      .event(event({ type: "lease_revoked", leaseId: "a" }, [shard.auditOfTask("t1")]));
    await redis.zadd(shard.liveLeases, 1, "a");
    const result = await writer.run(write);
    expect(result.ok).to.equal(true);
    expect(JSON.parse(result.record ?? "{}")).to.include({ status: "revoked", round: 1 });
    expect(await redis.zscore(shard.liveLeases, "a")).to.equal(null);
    expect(await redis.ttl(shard.lease("a"))).to.be.within(1, 60);
    const [id] = result.eventIds;
    expect(await redis.lrange(shard.auditOfTask("t1"), 0, -1)).to.deep.equal([id]);
    const [[, fields]] = (await redis.xrange(shard.audit, id as string, id as string)) as [
      [string, string[]],
    ];
    expect(JSON.parse(fields[1] ?? "{}")).to.include({ type: "lease_revoked" });
  });

  it("sends no record back for a quiet write, and still the failing guard's record when it is refused", async () => {
    await redis.set(shard.lease("q"), JSON.stringify({ id: "q", status: "active" }));
    const quiet = (status: string) =>
      new AtomicWrite(shard).guard(shard.lease("q"), [status]).patch({ status: "revoked" }).quiet();
    const applied = await writer.run(quiet("active"));
    expect(applied).to.include({ ok: true, record: undefined });
    expect(JSON.parse((await redis.get(shard.lease("q"))) ?? "{}")).to.include({ status: "revoked" });
    const refused = await writer.run(quiet("active"));
    expect(refused.ok).to.equal(false);
    expect(JSON.parse(refused.record ?? "{}")).to.include({ status: "revoked" });
  });

  it("applies nothing, events included, when a guard fails, and says which guard and what it saw", async () => {
    await redis.set(shard.lease("b"), JSON.stringify({ id: "b", status: "revoked" }));
    await redis.set(
      shard.task("t2"),
      JSON.stringify({ id: "t2", status: "approved", expiresAt: "2000-01-01T00:00:00.000Z" }),
    );
    const before = await redis.xlen(shard.audit);
    const write = new AtomicWrite(shard)
      .guard(shard.lease("b"), ["revoked"])
      .guard(shard.task("t2"), ["approved"], { laterThan: { expiresAt: "2026-01-01T00:00:00.000Z" } })
      .patch({ note: "x" })
      .zadd(shard.liveLeases, 5, "b")
      .event(event({ type: "lease_issued" }));
    const result = await writer.run(write);
    expect(result).to.include({ ok: false, failedGuard: 1 });
    expect(JSON.parse(result.record ?? "{}")).to.include({ id: "t2" });
    expect(await redis.zscore(shard.liveLeases, "b")).to.equal(null);
    expect(await redis.xlen(shard.audit)).to.equal(before);
    expect(JSON.parse((await redis.get(shard.lease("b"))) ?? "{}")).to.not.have.property("note");
  });

  it("treats an expected null as an absent field, and refuses a create over an existing record", async () => {
    await redis.set(shard.lease("c"), JSON.stringify({ id: "c", status: "active" }));
    const first = await writer.run(
      new AtomicWrite(shard)
        .guard(shard.lease("c"), ["active"], { equals: { firstUsedAt: null } })
        .patch({ firstUsedAt: "now" }),
    );
    expect(first.ok).to.equal(true);
    const second = await writer.run(
      new AtomicWrite(shard)
        .guard(shard.lease("c"), ["active"], { equals: { firstUsedAt: null } })
        .patch({ firstUsedAt: "later" }),
    );
    expect(second.ok).to.equal(false);
    const exists = await writer.run(
      new AtomicWrite(shard).create(shard.lease("c"), { id: "c" }).zadd(shard.allLeases, 1, "c"),
    );
    expect(exists).to.include({ ok: false, exists: true });
    expect(await redis.zscore(shard.allLeases, "c")).to.equal(null);
  });

  it("moves the members of a set that are in the given indexes, and writes how many into an event", async () => {
    await redis.zadd(shard.taskLeases("t3"), 1, "l1", 2, "l2", 3, "l3");
    await redis.zadd(shard.liveLeases, 10, "l1");
    await redis.zadd(shard.failedLeases, 20, "l2");
    const write = new AtomicWrite(shard).moveMembers(
      shard.taskLeases("t3"),
      [shard.liveLeases, shard.failedLeases],
      shard.revokingLeases,
      99,
    );
    write.event(event({ type: "task_completed" }, [], true), { movedCountField: "revoking" });
    const result = await writer.run(write);
    expect([...result.moved].sort()).to.deep.equal(["l1", "l2"]);
    expect(await redis.zrange(shard.revokingLeases, 0, -1, "WITHSCORES")).to.deep.equal([
      "l1",
      "99",
      "l2",
      "99",
    ]);
    const [[, fields]] = (await redis.xrange(
      shard.audit,
      result.eventIds[0] as string,
      result.eventIds[0] as string,
    )) as [[string, string[]]];
    expect(JSON.parse(fields[1] ?? "{}")).to.include({ revoking: 2 });
  });

  it("moves thousands of members in bulk, each from the first index that holds it, in the set's order", async () => {
    const bulk = keys.shard(2);
    const names = Array.from({ length: 2500 }, (_, n) => `m${String(n).padStart(4, "0")}`);
    await redis.zadd(bulk.taskLeases("t4"), ...names.flatMap((name, n) => [n, name]));
    const live = names.filter((_, n) => n % 2 === 0);
    const failed = names.filter((_, n) => n % 5 === 1 || n % 10 === 0);
    await redis.zadd(bulk.liveLeases, ...live.flatMap((name) => [1, name]));
    await redis.zadd(bulk.failedLeases, ...failed.flatMap((name) => [2, name]));
    const result = await writer.run(
      new AtomicWrite(bulk).moveMembers(
        bulk.taskLeases("t4"),
        [bulk.liveLeases, bulk.failedLeases],
        bulk.revokingLeases,
        7,
      ),
    );
    const expected = names.filter((name) => live.includes(name) || failed.includes(name));
    expect(result.moved).to.deep.equal(expected);
    expect(await redis.zcard(bulk.revokingLeases)).to.equal(expected.length);
    expect(await redis.zcard(bulk.liveLeases)).to.equal(0);
    // Members in both indexes left the first one only.
    const inBoth = failed.filter((name) => live.includes(name));
    expect(inBoth.length).to.be.above(0);
    expect(await redis.zrange(bulk.failedLeases, 0, -1)).to.have.members(inBoth);
  });

  it("refuses, before sending anything, a key of another shard: one write, one slot", () => {
    expect(() => new AtomicWrite(shard).zadd(keys.shard(2).liveLeases, 1, "x")).to.throw(/not in shard/);
  });

  it("trims the shard's stream and an index list by retention as it appends", async () => {
    const short = new AtomicWriter(redis, { retentionMs: 1, channel: `${prefix}:events` });
    const trimShard = keys.shard(3);
    const index = trimShard.auditOfAgent("a");
    await writer.runAll(
      Array.from({ length: 300 }, (_, n) => new AtomicWrite(trimShard).event(event({ n }, [index]))),
    );
    expect(await redis.xlen(trimShard.audit)).to.equal(300);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const append = (from: number, count: number) =>
      short.runAll(
        Array.from({ length: count }, (_, n) =>
          new AtomicWrite(trimShard).event(event({ n: from + n }, [index])),
        ),
      );
    // The list looks at its head on every 16th append only ...
    await append(300, 3);
    expect(await redis.llen(index)).to.equal(303);
    // ... and then drops expired ids, up to 8 for each append since it last looked.
    await append(303, 1);
    expect(await redis.llen(index)).to.equal(304 - 128);
    // MINID trims whole stream nodes (~, 100 entries each): the old ones are gone.
    expect(await redis.xlen(trimShard.audit)).to.be.below(300);
  });

  it("runs many writes of several shards in calls of a few dozen, each applied or refused on its own", async () => {
    const { channel, publishing } = announcing("many-changes");
    const shards = [keys.shard(0), keys.shard(2)] as const;
    const count = WRITES_PER_CALL * 2 + 5;
    const shardOf = (n: number) => shards[n % 2] as (typeof shards)[number];
    // Every third lease is already revoked: its write is refused, and only its write.
    const refused = (n: number) => n % 3 === 0;
    const writes = await Promise.all(
      Array.from({ length: count }, async (_, n) => {
        const at = shardOf(n);
        const id = `many-${n}`;
        await redis.set(at.lease(id), JSON.stringify({ id, status: refused(n) ? "revoked" : "active" }));
        await redis.zadd(at.liveLeases, n, id);
        return new AtomicWrite(at)
          .guard(at.lease(id), ["active"])
          .patch({ status: "revoked", n })
          .zrem(at.liveLeases, id)
          .event(event({ type: "lease_revoked", leaseId: id }, [at.auditOfTask("many")]));
      }),
    );
    let results: Awaited<ReturnType<AtomicWriter["runAll"]>> = [];
    const messages = await messagesOn(channel, async () => {
      results = await publishing.runAll(writes);
    });
    results.forEach((result, n) => {
      expect(result.ok, `write ${n}`).to.equal(!refused(n));
      expect(result.eventIds, `write ${n}`).to.have.length(refused(n) ? 0 : 1);
    });
    // One message per call: each shard's writes went in calls of at most WRITES_PER_CALL.
    expect(messages).to.have.length(4);
    for (const message of messages) expect(message.split("\n").length).to.be.within(1, WRITES_PER_CALL);
    for (const [parity, at] of shards.entries()) {
      const ids = Array.from({ length: count }, (_, n) => n).filter((n) => n % 2 === parity);
      expect(await redis.zrange(at.liveLeases, 0, -1)).to.have.members(
        ids.filter(refused).map((n) => `many-${n}`),
      );
      expect(await redis.llen(at.auditOfTask("many"))).to.equal(ids.filter((n) => !refused(n)).length);
    }
  });

  it("publishes the keys a call patched in one message, which RecordChanges hears a key at a time", async () => {
    const { channel, publishing } = announcing("changes");
    const changes = new RecordChanges({ redis, channel, logger: createLogger({ level: "error" }) });
    const heard: (string | undefined)[] = [];
    changes.subscribe((key) => heard.push(key));
    await eventually(async () => (changes.connected ? true : undefined), 5000);
    heard.length = 0;
    const at = keys.shard(3);
    const ids = ["p1", "p2", "p3"];
    for (const id of ids) await redis.set(at.lease(id), JSON.stringify({ id, status: "active" }));
    const messages = await messagesOn(channel, () =>
      publishing.runAll([
        ...ids.map((id) => new AtomicWrite(at).guard(at.lease(id), ["active"]).patch({ status: "revoked" })),
        // An index change patches no record: nothing to publish for it.
        new AtomicWrite(at).zadd(at.liveLeases, 1, "p4"),
      ]),
    );
    expect(messages).to.deep.equal([ids.map((id) => at.lease(id)).join("\n")]);
    await eventually(async () => (heard.length >= 3 ? true : undefined), 5000);
    expect(heard).to.deep.equal(ids.map((id) => at.lease(id)));
    await changes.close();
  });

  it("reads each write's keys and events right when the writes of one call name different keys", async () => {
    const at = keys.shard(0);
    await redis.set(at.lease("mx-1"), JSON.stringify({ id: "mx-1", status: "active" }));
    const [patched, created, eventOnly] = await writer.runAll([
      new AtomicWrite(at)
        .guard(at.lease("mx-1"), ["active"])
        .patch({ status: "revoked" })
        .zadd(at.revokingLeases, 5, "mx-1")
        .event(event({ type: "one" }, [at.auditOfTask("mx-t1")])),
      new AtomicWrite(at)
        .create(at.lease("mx-2"), { id: "mx-2", status: "issuing" })
        .zadd(at.failedLeases, 7, "mx-2")
        .event(event({ type: "two" }, [at.auditOfAgent("mx-a2")]))
        .event(event({ type: "three" }, [at.auditOfTask("mx-t1"), at.auditOfAgent("mx-a2")])),
      new AtomicWrite(at).event(event({ type: "four" }, [at.auditOfTask("mx-t4")])),
    ]);
    expect([patched?.ok, created?.ok, eventOnly?.ok]).to.deep.equal([true, true, true]);
    expect(JSON.parse((await redis.get(at.lease("mx-1"))) ?? "{}")).to.include({ status: "revoked" });
    expect(JSON.parse((await redis.get(at.lease("mx-2"))) ?? "{}")).to.include({ status: "issuing" });
    expect(await redis.zscore(at.revokingLeases, "mx-1")).to.equal("5");
    expect(await redis.zscore(at.failedLeases, "mx-2")).to.equal("7");
    const typeOf = async (id: string | undefined) => {
      const [[, fields]] = (await redis.xrange(at.audit, id as string, id as string)) as [[string, string[]]];
      return JSON.parse(fields[1] ?? "{}").type as string;
    };
    const ids = [...(patched?.eventIds ?? []), ...(created?.eventIds ?? []), ...(eventOnly?.eventIds ?? [])];
    expect(await Promise.all(ids.map(typeOf))).to.deep.equal(["one", "two", "three", "four"]);
    expect(await redis.lrange(at.auditOfTask("mx-t1"), 0, -1)).to.deep.equal([ids[0], ids[2]]);
    expect(await redis.lrange(at.auditOfAgent("mx-a2"), 0, -1)).to.deep.equal([ids[1], ids[2]]);
    expect(await redis.lrange(at.auditOfTask("mx-t4"), 0, -1)).to.deep.equal([ids[3]]);
  });

  it("still tells other processes what it changed when a write of the call fails midway", async () => {
    const { channel, publishing } = announcing("failing-changes");
    const at = keys.shard(1);
    for (const id of ["f1", "f2", "f3"])
      await redis.set(at.lease(id), JSON.stringify({ id, status: "active" }));
    // Not a sorted set: the second write's ZREM fails after its patch was applied.
    await redis.set(at.revokingLeases, "not a sorted set");
    const revoke = (id: string, failing = false) => {
      const write = new AtomicWrite(at).guard(at.lease(id), ["active"]).patch({ status: "revoked" });
      return failing ? write.zrem(at.revokingLeases, id) : write;
    };
    let failure: unknown;
    const messages = await messagesOn(channel, () =>
      publishing.runAll([revoke("f1"), revoke("f2", true), revoke("f3")]).catch((error: unknown) => {
        failure = error;
      }),
    );
    expect(String(failure)).to.match(/WRONGTYPE/);
    // A script is not rolled back: what ran stays, and is announced; the write after it never ran.
    const status = async (id: string) => JSON.parse((await redis.get(at.lease(id))) ?? "{}").status;
    expect([await status("f1"), await status("f2"), await status("f3")]).to.deep.equal([
      "revoked",
      "revoked",
      "active",
    ]);
    expect(messages).to.deep.equal([[at.lease("f1"), at.lease("f2")].join("\n")]);
    await redis.del(at.revokingLeases);
  });

  it("publishes the events one call wrote for waiting clients in one message, and LiveEvents hands each on", async () => {
    const channel = `${prefix}:live-batch`;
    const publishing = new AtomicWriter(redis, { retentionMs: 3_600_000, channel });
    const live = new LiveEvents({ redis, channel, logger: createLogger({ level: "error" }) });
    const heard: { name: string; leaseId?: string; id: string }[] = [];
    live.subscribe(({ name, event }) => heard.push({ name, leaseId: event.leaseId, id: event.id }));
    await live.ready();
    try {
      const at = keys.shard(2);
      const revoked = (leaseId: string) =>
        new AtomicWrite(at).event(event({ type: "lease_revoked", leaseId, at: "x" }, [], true));
      // Published too, but it names no notification: LiveEvents passes it over.
      const minted = new AtomicWrite(at).event(
        event({ type: "lease_issued", leaseId: "lb0", at: "x" }, [], true),
      );
      const messages = await messagesOn(channel, () =>
        publishing.runAll([revoked("lb1"), minted, revoked("lb2"), revoked("lb3")]),
      );
      expect(messages).to.have.length(1);
      expect((messages[0] as string).split("\n")).to.have.length(4);
      await eventually(async () => (heard.length >= 3 ? true : undefined), 5000);
      expect(heard.map(({ name, leaseId }) => [name, leaseId])).to.deep.equal([
        ["lease_revoked", "lb1"],
        ["lease_revoked", "lb2"],
        ["lease_revoked", "lb3"],
      ]);
      expect(new Set(heard.map(({ id }) => id)).size).to.equal(3);
    } finally {
      await live.close();
    }
  });

  /** A writer that announces the records it patches on a channel of its own. */
  function announcing(name: string): { channel: string; publishing: AtomicWriter } {
    const channel = `${prefix}:${name}`;
    return {
      channel,
      publishing: new AtomicWriter(redis, {
        retentionMs: 3_600_000,
        channel: `${prefix}:events`,
        changes: channel,
      }),
    };
  }

  /** The messages published on `channel` while `fn` ran. */
  async function messagesOn(channel: string, fn: () => Promise<unknown>): Promise<string[]> {
    const listener = redis.duplicate();
    const messages: string[] = [];
    listener.on("message", (_channel: string, message: string) => messages.push(message));
    await listener.subscribe(channel);
    try {
      await fn();
      await eventually(async () => (messages.length > 0 ? true : undefined), 5000);
      await new Promise((resolve) => setTimeout(resolve, 50));
      return messages;
    } finally {
      listener.disconnect();
    }
  }
});
