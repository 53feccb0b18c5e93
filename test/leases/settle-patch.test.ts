import { expect } from "chai";
import { type AuditInput, AuditLog } from "../../broker/audit/audit-log.ts";
import { ManualClock } from "../../broker/clock.ts";
import type { Lease } from "../../broker/leases/lease.ts";
import { LeaseStates } from "../../broker/leases/lease-states.ts";
import { createLogger } from "../../broker/logger.ts";
import { RedisKeys } from "../../broker/redis.ts";
import { AtomicWriter } from "../../broker/store/atomic-write.ts";
import { deletePrefix, eventually, testRedis, uniquePrefix } from "../helpers/redis.ts";

/**
 * A direct settle (a lease whose adapter has nothing to delete) is written either by the
 * general atomic write or, for an issuing or active lease without a handle, as one patch of a
 * batch. Both must leave the same record, indexes, audit event and messages.
 */
describe("direct settle as a batch patch: the same as the general write", () => {
  const redis = testRedis();
  const prefix = uniquePrefix("settle-patch");
  const keys = new RedisKeys(prefix, "default", 4);
  const channel = `${prefix}:events`;
  const changes = `${prefix}:changes`;
  const writer = new AtomicWriter(redis, { retentionMs: 3_600_000, channel, changes });
  const clock = new ManualClock(Date.parse("2026-11-26T12:00:01.500Z"));
  const lines: string[] = [];
  const audit = new AuditLog({
    redis,
    keys,
    writer,
    logger: createLogger({ level: "info", sink: { write: (line: string) => lines.push(line) } }),
    clock,
    taskOfLease: async () => undefined,
  });
  const states = new LeaseStates(keys, { staleMs: 60_000, retentionSeconds: 7200 });
  const revokedAt = new Date(clock.now()).toISOString();
  const request = {
    reason: "expired" as const,
    requestedAt: "2026-11-26T12:00:00.000Z",
    requestedBy: "system",
  };
  after(async () => {
    await deletePrefix(redis, prefix);
    redis.disconnect();
  });

  /** An active lease in the live index and, as a sweeper's claim leaves it, the revoking index. */
  async function seed(id: string, fields: Partial<Lease> = {}): Promise<Lease> {
    const lease: Lease = {
      id,
      tenant: "default",
      taskId: `task-${id}`,
      agentId: "spiffe://example.org/agent",
      resource: "api",
      adapter: "jwt",
      scopes: ["read"],
      issuedAt: "2026-11-26T11:00:00.000Z",
      expiresAt: request.requestedAt,
      status: "active",
      revocable: true,
      revocation: "introspection",
      ...fields,
    };
    const shard = states.shardOf(id);
    await redis.set(shard.lease(id), JSON.stringify(lease), "EX", 99_999);
    await redis.zadd(shard.liveLeases, Date.parse(lease.expiresAt), id);
    await redis.zadd(shard.revokingLeases, clock.now() + 60_000, id);
    return lease;
  }
  const input = (lease: Lease): AuditInput => ({
    type: "lease_revoked",
    actor: "system",
    agentId: lease.agentId,
    taskId: lease.taskId,
    leaseId: lease.id,
    resource: lease.resource,
    reason: "expired",
    lagSeconds: 1.5,
  });
  const patchOf = (lease: Lease) => {
    const patch = states.settleDirectPatch(lease, request, revokedAt);
    if (!patch) throw new Error(`no patch for ${lease.id}`);
    return { ...patch, event: audit.prepare(patch.shard, input(lease)) };
  };

  /** How many of `ids` an audit index list holds. */
  const listed = async (list: string, ids: string[]) =>
    (await redis.lrange(list, 0, -1)).filter((id) => ids.includes(id)).length;

  /** What a settle left of a lease, with its id taken out so two leases compare. */
  async function left(lease: Lease) {
    const shard = states.shardOf(lease.id);
    const events = (await redis.xrange(shard.audit, "-", "+")) as [string, string[]][];
    const stored = events.filter(([, fields]) => JSON.parse(fields[1] ?? "{}").leaseId === lease.id);
    const ids = stored.map(([id]) => id);
    const anonymous = (json: string) => json.replaceAll(lease.id, "<id>");
    return {
      record: JSON.parse(anonymous((await redis.get(shard.lease(lease.id))) ?? "{}")),
      ttl: Math.round((await redis.ttl(shard.lease(lease.id))) / 100),
      indexes: await Promise.all(
        [shard.liveLeases, shard.revokingLeases, shard.failedLeases].map((index) =>
          redis.zscore(index, lease.id),
        ),
      ),
      events: stored.map(([, fields]) => JSON.parse(anonymous(fields[1] ?? "{}"))),
      byTask: await listed(shard.auditOfTask(lease.taskId), ids),
      byAgent: await listed(shard.auditOfAgent(lease.agentId), ids),
      eventIds: ids.length,
      logged: lines
        .filter((line) => line.includes(lease.id))
        .map((line) => {
          // The audit line: the event as stored, its public id first.
          const { id, ...event } = JSON.parse(anonymous(line)).audit;
          return { id: /^\d+-\d+-\d+$/.test(id), event };
        }),
    };
  }

  /** Messages on the record-changes and live-events channels while `fn` runs. */
  async function heard(fn: () => Promise<unknown>): Promise<{ changed: string[]; live: string[] }> {
    const listener = redis.duplicate();
    const got = { changed: [] as string[], live: [] as string[] };
    listener.on("message", (from: string, message: string) =>
      (from === changes ? got.changed : got.live).push(message),
    );
    await listener.subscribe(changes, channel);
    try {
      await fn();
      await eventually(async () => (got.changed.length > 0 && got.live.length > 0 ? true : undefined), 5000);
      return got;
    } finally {
      listener.disconnect();
    }
  }

  it("leaves the same record, expiry, indexes, event, index lists and log line as the general write", async () => {
    const general = await seed("lease-general");
    const batched = await seed("lease-batched");
    const write = states.settleDirect(general, request, revokedAt).quiet();
    audit.add(write, input(general));
    expect((await audit.apply(write)).ok).to.equal(true);
    expect(await audit.applyPatches([patchOf(batched)])).to.deep.equal([true]);

    const [a, b] = [await left(general), await left(batched)];
    expect(b).to.deep.equal(a);
    // And what both left is a settled lease: checked once, for both.
    expect(a.record).to.include({
      status: "revoked",
      revokedAt,
      revokeReason: "expired",
      revokeRequestedBy: "system",
    });
    expect(a.ttl).to.equal(72);
    expect(a.indexes).to.deep.equal([null, null, null]);
    expect(a.events).to.have.length(1);
    expect(a.events[0]).to.include({
      type: "lease_revoked",
      leaseId: "<id>",
      at: revokedAt,
      lagSeconds: 1.5,
    });
    expect([a.byTask, a.byAgent]).to.deep.equal([1, 1]);
    expect(a.logged).to.deep.equal([{ id: true, event: a.events[0] }]);
  });

  it("tells other processes of the patched record and waiting clients of the event, one message each per call", async () => {
    const leases = [await seed("lease-m1"), await seed("lease-m2"), await seed("lease-m3")];
    const sameShard = leases.filter(
      (lease) => states.shardOf(lease.id) === states.shardOf(leases[0]?.id ?? ""),
    );
    const got = await heard(() => audit.applyPatches(sameShard.map(patchOf)));
    const shard = states.shardOf(sameShard[0]?.id ?? "");
    expect(got.changed).to.deep.equal([sameShard.map((lease) => shard.lease(lease.id)).join("\n")]);
    expect(got.live).to.have.length(1);
    expect(
      (got.live[0] as string)
        .split("\n")
        .map((line) => JSON.parse(line.split(" ").slice(2).join(" ")).leaseId),
    ).to.deep.equal(sameShard.map((lease) => lease.id));
  });

  it("refuses, each on its own, a patch whose lease is gone or moved on, and writes nothing for it", async () => {
    const moved = await seed("lease-moved");
    const gone = await seed("lease-gone");
    const fine = await seed("lease-fine");
    await redis.set(
      states.shardOf(moved.id).lease(moved.id),
      JSON.stringify({ ...moved, status: "revoking" }),
    );
    await redis.del(states.shardOf(gone.id).lease(gone.id));
    const patches = [patchOf(moved), patchOf(gone), patchOf(fine)];
    expect(await audit.applyPatches(patches)).to.deep.equal([false, false, true]);
    for (const lease of [moved, gone]) {
      const after = await left(lease);
      expect(after.events, lease.id).to.deep.equal([]);
      expect(after.logged, lease.id).to.deep.equal([]);
      expect(after.indexes, lease.id).to.deep.equal([
        Date.parse(lease.expiresAt).toString(),
        String(clock.now() + 60_000),
        null,
      ]);
    }
    expect((await left(moved)).record).to.include({ status: "revoking" });
    expect((await left(fine)).record).to.include({ status: "revoked" });
  });

  it("is only for an issuing or active lease without a handle: the rest take the general write", async () => {
    expect(
      states.settleDirectPatch(await seed("lease-i", { status: "issuing" }), request, revokedAt),
    ).to.not.equal(undefined);
    for (const fields of [
      { status: "revoking" as const },
      { status: "revoke_failed" as const },
      { handle: "h-1" },
    ])
      expect(
        states.settleDirectPatch(await seed("lease-x", fields), request, revokedAt),
        JSON.stringify(fields),
      ).to.equal(undefined);
  });
});
