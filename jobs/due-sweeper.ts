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
 * leases are live.
 */
const CLAIM_SCRIPT = `${LUA_LOWEST_AT_MOST}
local now, lookAgainAt, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function due(key)
  if not lowestAtMost(key, now) then return {} end
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
return {leases, tasks}
`;

type Client = (Redis | Cluster) & {
  jitkeyClaimDue(...args: string[]): Promise<[string[], string[]]>;
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

  /** One pass over every shard; returns how many leases and tasks it handed to jobs. */
  async sweepOnce(): Promise<{ leases: number; tasks: number }> {
    const counts = await Promise.all(this.deps.keys.shards.map((shard) => this.sweepShard(shard)));
    return counts.reduce(
      (sum, count) => ({ leases: sum.leases + count.leases, tasks: sum.tasks + count.tasks }),
      {
        leases: 0,
        tasks: 0,
      },
    );
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
        // More may be due at once (an expiry storm): go again without waiting.
        if (found.leases + found.tasks > 0) pause = 0;
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

  private async sweepShard(shard: ShardKeys): Promise<{ leases: number; tasks: number }> {
    const now = this.deps.clock.now();
    const [leases, tasks] = await (this.deps.redis as Client).jitkeyClaimDue(
      shard.liveLeases,
      shard.revokingLeases,
      shard.failedLeases,
      shard.liveTasks,
      String(now),
      String(now + this.deps.staleMs),
      String(this.deps.batch ?? 500),
    );
    await Promise.all([this.deps.queue.settleLeases(leases), this.deps.queue.expireTasks(tasks)]);
    return { leases: leases.length, tasks: tasks.length };
  }
}
