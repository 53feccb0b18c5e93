import { createHash } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import type { Clock } from "../clock.ts";
import type { Config } from "../config.ts";
import { JitkeyError } from "../errors.ts";
import type { Lease, LeaseStatus } from "../leases/lease.ts";
import type { Metrics } from "../metrics.ts";
import type { RedisKeys } from "../redis.ts";
import type { RecordStore } from "../store/record-store.ts";
import type { Task } from "../tasks/task.ts";

/** The quotas `quotas` in the config may set. */
export const QUOTA_NAMES = ["liveLeasesPerAgent", "liveLeasesPerResource", "pendingTasksPerAgent"] as const;
export type QuotaName = (typeof QUOTA_NAMES)[number];

/** A quota is full: `429 rate_limited`, naming the quota, with when a slot should free up. */
export class QuotaExceededError extends JitkeyError {
  static override readonly code = "rate_limited";
  readonly quota: QuotaName;
  readonly retryAfterSeconds: number;
  constructor(quota: QuotaName, limit: number, retryAfterSeconds: number) {
    super(`quota ${quota} of ${limit} reached`, 429, {
      retryAfterSeconds,
      quota,
      limit,
      reason: `quota ${quota} of ${limit} reached`,
    });
    this.quota = quota;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** Slots taken for a lease or task; give them back when its write did not happen. */
export interface Reservation {
  release(): Promise<void>;
}

const NOTHING_RESERVED: Reservation = { release: async () => {} };

/** Lease statuses that hold a live-lease slot: until the lease is revoked (or its revocation failed). */
const SLOT_HOLDING: readonly LeaseStatus[] = ["issuing", "active", "revoking"];

/**
 * Takes a slot in a quota set if it has room. One key, one script: two brokers racing for the
 * last slot cannot both get it. -1 when taken (or already held), else how many are held.
 */
const RESERVE_SCRIPT = `
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return -1 end
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then return held end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return -1
`;

type Client = (Redis | Cluster) & {
  jitkeyReserveSlot(key: string, limit: string, member: string, score: string, ttl: string): Promise<number>;
};

/** Whether a member's record still holds its slot, and when it should let go of it (its expiry, ms). */
type SlotState = { held: false } | { held: true; endsAt: number };

/** One quota as it applies to one request: its set of slots and how to tell a slot is still held. */
interface Slots {
  quota: QuotaName;
  limit: number;
  key: string;
  /** The state of each member that has a record. */
  holders(ids: string[]): Promise<Map<string, SlotState>>;
}

/**
 * Live-lease and pending-task quotas, shared by every broker process.
 *
 * A lease's or task's shard is fixed by its id, so an agent's leases are spread over every
 * shard and no single atomic write can count them. Each quota is instead one sorted set
 * outside the shards (its own hash slot), holding the ids that took a slot, scored by when.
 * A mint (or a pending task) takes its slot in that set with one atomic script *before* the
 * record is written, and gives it back if the write does not happen. Slots are not given back
 * on revocation: when a set is full, its members are read and those no longer live (revoked,
 * revoke_failed, decided, gone) are dropped before the second and last try. A slot whose
 * record never appeared (a broker that died between the two writes) is dropped once it is
 * `staleMs` old. So the limit is never exceeded; a crash can only hold a slot for `staleMs`.
 * The cost of a check is one script call, plus one read of at most `limit` records when full.
 */
export class Quotas {
  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      leases: RecordStore<Lease>;
      tasks: RecordStore<Task>;
      metrics: Metrics;
      clock: Clock;
      quotas: Config["quotas"];
      /** How old a slot whose record is missing must be before it is taken for abandoned. */
      staleMs: number;
      /** How long a set is kept after its last new slot: longer than any task lives. */
      keepSeconds: number;
    },
  ) {
    if (!("jitkeyReserveSlot" in deps.redis))
      deps.redis.defineCommand("jitkeyReserveSlot", { numberOfKeys: 1, lua: RESERVE_SCRIPT });
    for (const quota of QUOTA_NAMES) {
      const limit = deps.quotas[quota];
      if (limit !== undefined) deps.metrics.quotaLimit.set({ quota }, limit);
    }
  }

  /** Takes the lease's slots in the per-agent and per-resource live-lease quotas. */
  async reserveLease(lease: Pick<Lease, "id" | "agentId" | "resource">): Promise<Reservation> {
    const { quotas } = this.deps;
    const slots: Slots[] = [];
    if (quotas.liveLeasesPerAgent !== undefined)
      slots.push(
        this.leaseSlots("liveLeasesPerAgent", quotas.liveLeasesPerAgent, `agent:${digest(lease.agentId)}`),
      );
    if (quotas.liveLeasesPerResource !== undefined)
      slots.push(
        this.leaseSlots("liveLeasesPerResource", quotas.liveLeasesPerResource, `resource:${lease.resource}`),
      );
    return this.reserve(lease.id, slots);
  }

  /** Takes a task's slot in its agent's pending-task quota. */
  async reservePendingTask(task: Pick<Task, "id" | "agentId">): Promise<Reservation> {
    const limit = this.deps.quotas.pendingTasksPerAgent;
    if (limit === undefined) return NOTHING_RESERVED;
    return this.reserve(task.id, [
      {
        quota: "pendingTasksPerAgent",
        limit,
        key: this.key(`pending-tasks:agent:${digest(task.agentId)}`),
        holders: async (ids) =>
          this.states(await this.deps.tasks.getMany(ids), (task) => task.status === "pending"),
      },
    ]);
  }

  private leaseSlots(quota: QuotaName, limit: number, subject: string): Slots {
    return {
      quota,
      limit,
      key: this.key(`live-leases:${subject}`),
      holders: async (ids) =>
        this.states(await this.deps.leases.getMany(ids), (lease) => SLOT_HOLDING.includes(lease.status)),
    };
  }

  /** Takes `member`'s slot in each set, in order; all or none. */
  private async reserve(member: string, slots: readonly Slots[]): Promise<Reservation> {
    const taken: Slots[] = [];
    const release = async () => {
      await Promise.all(taken.map((slot) => this.deps.redis.zrem(slot.key, member)));
    };
    try {
      for (const slot of slots) {
        await this.take(member, slot);
        taken.push(slot);
      }
    } catch (error) {
      await release();
      throw error;
    }
    return { release };
  }

  private async take(member: string, slots: Slots): Promise<void> {
    if (await this.tryTake(member, slots)) return;
    const retryAfterMs = await this.dropReleased(slots);
    if (await this.tryTake(member, slots)) return;
    this.deps.metrics.quotaDenials.inc({ quota: slots.quota });
    throw new QuotaExceededError(slots.quota, slots.limit, Math.max(1, Math.ceil(retryAfterMs / 1000)));
  }

  private async tryTake(member: string, slots: Slots): Promise<boolean> {
    const held = await (this.deps.redis as Client).jitkeyReserveSlot(
      slots.key,
      String(slots.limit),
      member,
      String(this.deps.clock.now()),
      String(this.deps.keepSeconds),
    );
    return held === -1;
  }

  /** Drops the slots of members no longer live; returns how long until a live one should end. */
  private async dropReleased(slots: Slots): Promise<number> {
    const now = this.deps.clock.now();
    const entries = await this.deps.redis.zrange(slots.key, 0, -1, "WITHSCORES");
    const takenAt = new Map<string, number>();
    for (let i = 0; i + 1 < entries.length; i += 2) takenAt.set(entries[i] as string, Number(entries[i + 1]));
    const states = await slots.holders([...takenAt.keys()]);
    const released: string[] = [];
    let soonest = Number.POSITIVE_INFINITY;
    for (const [id, at] of takenAt) {
      const state = states.get(id);
      // A slot with no record yet may be a mint between its two writes: kept until it is stale.
      const abandoned = !state && at <= now - this.deps.staleMs;
      if (abandoned || state?.held === false) released.push(id);
      else soonest = Math.min(soonest, state?.held ? state.endsAt : at + this.deps.staleMs);
    }
    if (released.length > 0) await this.deps.redis.zrem(slots.key, ...released);
    return Number.isFinite(soonest) ? soonest - now : 1000;
  }

  /** Whether each member's record still holds its slot, and until when; absent when there is no record. */
  private states<R extends { id: string; expiresAt: string }>(
    found: readonly R[],
    holds: (record: R) => boolean,
  ): Map<string, SlotState> {
    return new Map<string, SlotState>(
      found.map((record) => [
        record.id,
        holds(record) ? { held: true, endsAt: Date.parse(record.expiresAt) } : { held: false },
      ]),
    );
  }

  /** One set per quota and subject, each in its own hash slot. */
  private key(subject: string): string {
    return `${this.deps.keys.base}:quota:{${subject}}`;
  }
}

/** Agent ids are long and any text: keys name a digest. */
function digest(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex").slice(0, 32);
}
