import type { Cluster, Redis } from "ioredis";
import type { Clock } from "../broker/clock.ts";
import type { Logger } from "../broker/logger.ts";
import { LUA_LOWEST_AT_MOST, type RedisKeys, type ShardKeys } from "../broker/redis.ts";
import type { RevocationQueue } from "./queues.ts";

/**
 * Claims what is due in one shard: live leases past their expiry (or a mint gone stale),
 * failed leases due for a retry, revocations that stalled, tasks past their expiry. Claimed
 * leases move to the revoking index, and every claimed member's score moves to `lookAgainAt`:
 * if the job that should handle it is lost, it is claimed again then. Atomic, so two sweepers
 * never claim the same member.
 *
 * Each index's first member is looked at before it is read by score (`lowestAtMost`), so a
 * pass that finds nothing due, as most do, reads one member of each index however many
 * leases are live. The lowest score it saw comes back too (as a string, or false when every
 * index is empty): when the next member falls due, so the sweeper can wake then.
 */
const CLAIM_SCRIPT = `${LUA_LOWEST_AT_MOST}
local now, lookAgainAt, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local soonest
local function due(key)
  local first = lowest(key)
  if first ~= nil and (soonest == nil or first < soonest) then soonest = first end
  if first == nil or first > tonumber(now) then return {} end
  return redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
end
local leases = {}
for _, key in ipairs({KEYS[1], KEYS[3]}) do
  for _, id in ipairs(due(key)) do
    redis.call('ZREM', key, id)
    redis.call('ZADD', KEYS[2], lookAgainAt, id)
    leases[#leases + 1] = id
  end
end
for _, id in ipairs(due(KEYS[2])) do
  redis.call('ZADD', KEYS[2], lookAgainAt, id)
  leases[#leases + 1] = id
end
local tasks = due(KEYS[4])
for _, id in ipairs(tasks) do redis.call('ZADD', KEYS[4], lookAgainAt, id) end
return {leases, tasks, soonest and string.format('%.0f', soonest) or false}
`;

/** What one pass claimed, and when the next member falls due (ms; undefined: nothing is indexed). */
export interface SweepReport {
  leases: number;
  tasks: number;
  nextDueAt?: number;
}

/**
 * The shortest pause between passes when something falls due soon: passes a few milliseconds
 * apart at most, whatever the clock says (a test's manual clock does not move by itself).
 */
const MIN_PAUSE_MS = 5;

type Client = (Redis | Cluster) & {
  jitkeyClaimDue(...args: string[]): Promise<[string[], string[], string | null]>;
};

/**
 * Expiry without a job per lease: every lease and task sits in a due index scored by when it
 * must next be looked at, and sweepers (one loop in each worker process) claim what is due
 * and hand it to BullMQ jobs, which do every revocation. Cost per pass is bounded by what is
 * due, not by how many leases are live.
 */
export class DueSweeper {
  #running = false;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      queue: RevocationQueue;
      clock: Clock;
      logger: Logger;
      /** When a claimed member is looked at again if its job is lost. */
      staleMs: number;
      /** Members claimed per shard per call. */
      batch?: number;
      /** Pause between passes that found nothing. */
      idleMs?: number;
    },
  ) {
    if (!("jitkeyClaimDue" in deps.redis))
      deps.redis.defineCommand("jitkeyClaimDue", { numberOfKeys: 4, lua: CLAIM_SCRIPT });
  }

  /**
   * One pass over every shard; returns how many leases and tasks it handed to jobs, and when
   * the next member of any index falls due (undefined when every index is empty).
   */
  async sweepOnce(): Promise<SweepReport> {
    const reports = await Promise.all(this.deps.keys.shards.map((shard) => this.sweepShard(shard)));
    const report: SweepReport = { leases: 0, tasks: 0 };
    for (const { leases, tasks, nextDueAt } of reports) {
      report.leases += leases;
      report.tasks += tasks;
      if (nextDueAt !== undefined) report.nextDueAt = Math.min(nextDueAt, report.nextDueAt ?? nextDueAt);
    }
    return report;
  }

  /** Starts sweeping in the background until {@link stop}. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#loop = this.run();
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.#wake?.();
    await this.#loop;
  }

  private async run(): Promise<void> {
    const idleMs = this.deps.idleMs ?? 100;
    let failures = 0;
    while (this.#running) {
      let pause = idleMs;
      try {
        const found = await this.sweepOnce();
        failures = 0;
        // More may be due at once (an expiry storm): go again without waiting. Otherwise wake
        // when the next member falls due, if that is sooner than the idle pause: a lease is
        // claimed as it expires, not up to a pause later.
        if (found.leases + found.tasks > 0) pause = 0;
        else if (found.nextDueAt !== undefined)
          pause = Math.min(idleMs, Math.max(MIN_PAUSE_MS, found.nextDueAt - this.deps.clock.now() + 1));
      } catch (error) {
        failures += 1;
        if (failures === 1 || failures % 50 === 0)
          this.deps.logger.warn("due sweep failed; retrying", { error: (error as Error).message, failures });
        // Back off while Redis is away, but not so far that a recovery waits long for the first pass.
        pause = Math.min(1000, idleMs * 2 ** Math.min(failures, 4));
      }
      if (pause > 0 && this.#running)
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, pause);
          this.#wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
    }
  }

  private async sweepShard(shard: ShardKeys): Promise<SweepReport> {
    const now = this.deps.clock.now();
    const [leases, tasks, nextDueAt] = await (this.deps.redis as Client).jitkeyClaimDue(
      shard.liveLeases,
      shard.revokingLeases,
      shard.failedLeases,
      shard.liveTasks,
      String(now),
      String(now + this.deps.staleMs),
      String(this.deps.batch ?? 500),
    );
    await Promise.all([this.deps.queue.settleLeases(leases), this.deps.queue.expireTasks(tasks)]);
    return {
      leases: leases.length,
      tasks: tasks.length,
      nextDueAt: typeof nextDueAt === "string" ? Number(nextDueAt) : undefined,
    };
  }
}
