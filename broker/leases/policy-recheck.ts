import type { Cluster, Redis } from "ioredis";
import type { Clock } from "../clock.ts";
import type { Logger } from "../logger.ts";
import type { PolicyEngine } from "../policy/policy-engine.ts";
import type { RedisKeys } from "../redis.ts";
import type { RecordStore } from "../store/record-store.ts";
import type { Task } from "../tasks/task.ts";
import type { Lease } from "./lease.ts";
import type { LeaseRevoker } from "./lease-revoker.ts";

/** Leases read per batch while re-checking. */
const BATCH = 500;

/**
 * After a policy reload, asks the new policy about every live lease and revokes (reason
 * `policy`) those it no longer permits: a rule removed or narrowed takes effect on what is
 * already out, not only on what is minted next. Introspection already answers `active:
 * false` for them from the moment the reload is applied; this ends them for good.
 */
export class PolicyRecheck {
  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      leases: RecordStore<Lease>;
      tasks: RecordStore<Task>;
      revoker: Pick<LeaseRevoker, "request">;
      clock: Clock;
      logger: Logger;
    },
  ) {}

  /** Returns how many leases were sent to revocation. */
  async run(engine: Pick<PolicyEngine, "stillPermitted" | "generation">): Promise<number> {
    let revoked = 0;
    for (const shard of this.deps.keys.shards) {
      const ids = await this.deps.redis.zrange(shard.liveLeases, 0, -1);
      for (let at = 0; at < ids.length; at += BATCH) {
        const leases = (await this.deps.leases.getMany(ids.slice(at, at + BATCH))).filter(
          (lease) => lease.status === "active" || lease.status === "issuing",
        );
        const tasks = new Map(
          (await this.deps.tasks.getMany([...new Set(leases.map((lease) => lease.taskId))])).map((task) => [
            task.id,
            task,
          ]),
        );
        const forbidden = leases.filter((lease) => {
          const task = tasks.get(lease.taskId);
          return task !== undefined && !engine.stillPermitted(lease, task).allowed;
        });
        if (forbidden.length === 0) continue;
        const moved = await this.deps.revoker.request(
          forbidden.map((lease) => lease.id),
          {
            reason: "policy",
            requestedAt: new Date(this.deps.clock.now()).toISOString(),
            requestedBy: `policy:generation-${engine.generation}`,
          },
        );
        revoked += moved.length;
      }
    }
    if (revoked > 0)
      this.deps.logger.warn("policy reload revoked leases it no longer permits", {
        generation: engine.generation,
        revoked,
      });
    return revoked;
  }
}
