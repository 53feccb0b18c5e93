import type { Cluster, Redis } from "ioredis";
import type { CredentialAdapter } from "../adapters/types.ts";
import type { AuditLog } from "../broker/audit/audit-log.ts";
import type { Clock } from "../broker/clock.ts";
import type { Config } from "../broker/config.ts";
import type { Logger } from "../broker/logger.ts";
import type { Metrics } from "../broker/metrics.ts";
import { LUA_LOWEST_AT_MOST, type RedisKeys } from "../broker/redis.ts";

/**
 * Drops every member scored at or below `ARGV[1]` from each sorted set in `KEYS` (one shard's
 * listing indexes), reading a set by score only when its first member is that old: one call
 * per shard, reading one member of each set when there is nothing to drop. Returns how many it
 * dropped.
 */
const TRIM_SCRIPT = `${LUA_LOWEST_AT_MOST}
local dropped = 0
for _, key in ipairs(KEYS) do
  if lowestAtMost(key, ARGV[1]) then
    dropped = dropped + redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  end
end
return dropped
`;

type Client = (Redis | Cluster) & {
  jitkeyTrimIndexes(...args: string[]): Promise<number>;
};

/** What one reconciler pass did. */
export interface ReconcileReport {
  /** Backend credentials no live lease owned, revoked by an adapter's orphan sweep. */
  orphans: number;
  /** Listing-index entries past the retention period, dropped. */
  trimmed: number;
}

/** A report of a pass that did nothing. */
export function emptyReport(): ReconcileReport {
  return { orphans: 0, trimmed: 0 };
}

/**
 * Periodic upkeep that is not due-time work (that is the due sweeper's): asks adapters to
 * sweep what a crash left in their backends, and trims listing indexes by retention. Runs as
 * a BullMQ job scheduler, so one worker at a time does it. Its cost does not grow with the
 * number of live leases.
 */
export class Reconciler {
  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      adapters: ReadonlyMap<string, CredentialAdapter>;
      audit: AuditLog;
      metrics: Metrics;
      clock: Clock;
      logger: Logger;
      revocation: Pick<Config["revocation"], "staleSeconds">;
      retention: Config["retention"];
    },
  ) {
    if (!("jitkeyTrimIndexes" in deps.redis))
      deps.redis.defineCommand("jitkeyTrimIndexes", { lua: TRIM_SCRIPT });
  }

  async run(): Promise<ReconcileReport> {
    const report = emptyReport();
    // Each step stands alone: one failing (say, a backend down during the sweep) must not stop the others.
    for (const step of [() => this.sweepOrphans(report), () => this.trimIndexes(report)]) {
      try {
        await step();
      } catch (error) {
        this.deps.logger.error("reconciler step failed", { error: (error as Error).message });
      }
    }
    for (const [action, count] of Object.entries(report))
      if (count > 0) this.deps.metrics.reconciled.inc({ action }, count);
    if (report.orphans > 0) this.deps.logger.info("reconciler acted", { report });
    return report;
  }

  /**
   * Whether any resource's live lease recorded `handle`. Every resource is asked, not only the
   * one being swept: two resources may share a backend path, and one's sweep must never take
   * the other's live credentials for orphans.
   */
  private async isHandleOwned(handle: string): Promise<boolean> {
    const { redis, keys } = this.deps;
    const checks = keys.shards.flatMap((shard) =>
      [...this.deps.adapters.keys()].map((resource) => redis.hexists(shard.handles(resource), handle)),
    );
    // Unsure is not unowned: an error rejects, and the sweep stops rather than revoke a live credential.
    return (await Promise.all(checks)).some((owned) => owned === 1);
  }

  private async sweepOrphans(report: ReconcileReport): Promise<void> {
    const createdBefore = new Date(this.deps.clock.now() - this.deps.revocation.staleSeconds * 1000);
    for (const [resource, adapter] of this.deps.adapters) {
      if (!adapter.sweepOrphans) continue;
      try {
        const { revoked } = await adapter.sweepOrphans({
          createdBefore,
          isHandleOwned: (handle) => this.isHandleOwned(handle),
        });
        for (const handle of revoked) {
          await this.deps.audit.record({
            type: "orphan_revoked",
            actor: "system",
            resource,
            reason: "no live lease owns it",
            handle,
          });
        }
        report.orphans += revoked.length;
      } catch (error) {
        this.deps.logger.warn("orphan sweep failed", { resource, error: (error as Error).message });
      }
    }
  }

  /** Listing indexes keep ids of records that have expired: drop those past retention. */
  private async trimIndexes(report: ReconcileReport): Promise<void> {
    const { redis, keys } = this.deps;
    const cutoff = this.deps.clock.now() - this.deps.retention.leaseRecordDays * 86_400_000;
    const resources = [...this.deps.adapters.keys()];
    const trims = keys.shards.map((shard) => {
      const indexes = [shard.allTasks, shard.allLeases, ...resources.map((r) => shard.resourceLeases(r))];
      return (redis as Client).jitkeyTrimIndexes(String(indexes.length), ...indexes, String(cutoff));
    });
    report.trimmed += (await Promise.all(trims)).reduce((sum, n) => sum + n, 0);
  }
}
