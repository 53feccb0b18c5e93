import type { Redis } from "ioredis";
import type { Logger } from "winston";
import type { CredentialAdapter } from "../adapters/types.ts";
import type { AuditLog } from "../broker/audit/audit-log.ts";
import type { Clock } from "../broker/clock.ts";
import type { Config } from "../broker/config.ts";
import type { Lease } from "../broker/leases/lease.ts";
import type { LeaseService } from "../broker/leases/lease-service.ts";
import type { Metrics } from "../broker/metrics.ts";
import type { RecordStore, RedisKeys } from "../broker/redis.ts";
import type { TaskService } from "../broker/tasks/task-service.ts";
import type { RevocationQueue } from "./queues.ts";

/** What one reconciler pass did. */
export interface ReconcileReport {
  expiredLeases: number;
  staleIssuing: number;
  requeued: number;
  retriedFailed: number;
  expiredTasks: number;
  orphans: number;
  /** Revoked leases a crash had left in the live index. */
  tidied: number;
}

const PAGE = 500;

/** A report of a pass that did nothing. */
export function emptyReport(): ReconcileReport {
  return {
    expiredLeases: 0,
    staleIssuing: 0,
    requeued: 0,
    retriedFailed: 0,
    expiredTasks: 0,
    orphans: 0,
    tidied: 0,
  };
}

/**
 * Finds what the normal path missed — a lost delayed job, a broker that crashed mid-mint, a
 * worker that died mid-revoke, a revocation that failed for good — and sets it right.
 * Runs as a repeatable job, so one worker at a time does it.
 */
export class Reconciler {
  constructor(
    private readonly deps: {
      redis: Redis;
      keys: RedisKeys;
      leases: RecordStore<Lease>;
      leaseService: LeaseService;
      taskService: TaskService;
      queue: RevocationQueue;
      adapters: ReadonlyMap<string, CredentialAdapter>;
      audit: AuditLog;
      metrics: Metrics;
      clock: Clock;
      logger: Logger;
      revocation: Config["revocation"];
    },
  ) {}

  async run(): Promise<ReconcileReport> {
    const report = emptyReport();
    // Each step stands alone: one failing (say, a backend down during the sweep) must not stop the others.
    const steps = [
      () => this.reconcileLiveLeases(report),
      () => this.retryFailed(report),
      () => this.expireTasks(report),
      () => this.sweepOrphans(report),
    ];
    const errors: unknown[] = [];
    for (const step of steps) {
      try {
        await step();
      } catch (error) {
        errors.push(error);
        this.deps.logger.error("reconciler step failed", { error: (error as Error).message });
      }
    }
    for (const [action, count] of Object.entries(report))
      if (count > 0) this.deps.metrics.reconciled.inc({ action }, count);
    if (Object.values(report).some((count) => count > 0))
      this.deps.logger.info("reconciler acted", { report });
    return report;
  }

  private async reconcileLiveLeases(report: ReconcileReport): Promise<void> {
    const { redis, keys, clock, leaseService, queue } = this.deps;
    const now = clock.now();
    const staleMs = this.deps.revocation.staleSeconds * 1000;
    for (let offset = 0; ; offset += PAGE) {
      const ids = await redis.zrange(keys.liveLeases, offset, offset + PAGE - 1);
      if (ids.length === 0) break;
      const leases = await this.deps.leases.getMany(ids);
      const present = new Set(leases.map((lease) => lease.id));
      const vanished = ids.filter((id) => !present.has(id));
      if (vanished.length > 0) await redis.zrem(keys.liveLeases, ...vanished);
      for (const lease of leases) {
        const expiresAt = Date.parse(lease.expiresAt);
        if ((lease.status === "active" || lease.status === "issuing") && expiresAt <= now) {
          report.expiredLeases += (
            await leaseService.requestRevoke([lease.id], "expired", "system", new Date(expiresAt))
          ).length;
        } else if (lease.status === "issuing" && Date.parse(lease.issuedAt) + staleMs <= now) {
          report.staleIssuing += (
            await leaseService.requestRevoke([lease.id], "issue_failed", "system")
          ).length;
        } else if (
          lease.status === "revoking" &&
          Date.parse(lease.revokeRequestedAt ?? lease.issuedAt) + staleMs <= now
        ) {
          if (await queue.requeueRevoke(lease)) report.requeued += 1;
        } else if (lease.status === "revoked") {
          // Revoked, but a crash stopped the tidying: finish it.
          await leaseService.tidyRevoked(lease);
          report.tidied += 1;
        }
      }
      if (ids.length < PAGE) break;
    }
  }

  private async retryFailed(report: ReconcileReport): Promise<void> {
    const { redis, keys, clock } = this.deps;
    const before = clock.now() - this.deps.revocation.retryFailedAfterSeconds * 1000;
    const ids = await redis.zrangebyscore(keys.failedLeases, "-inf", before, "LIMIT", 0, PAGE);
    if (ids.length === 0) return;
    const moved = await this.deps.leaseService.requestRevoke(ids, "expired", "system");
    // A retried lease leaves the failed index until it fails again. Nothing may have moved (an
    // operator already sent them back to revoking), and ZREM with no member is an error.
    if (moved.length > 0) await redis.zrem(keys.failedLeases, ...moved.map((lease) => lease.id));
    report.retriedFailed += moved.length;
  }

  private async expireTasks(report: ReconcileReport): Promise<void> {
    const { redis, keys, clock } = this.deps;
    const ids = await redis.zrangebyscore(keys.liveTasks, "-inf", clock.now(), "LIMIT", 0, PAGE);
    for (const id of ids) if (await this.deps.taskService.expireIfDue(id)) report.expiredTasks += 1;
  }

  /**
   * Whether any resource's live lease recorded `handle`. Every resource is asked, not only the
   * one being swept: two resources may share a backend path, and one's sweep must never take
   * the other's live credentials for orphans.
   */
  private async isHandleOwned(handle: string): Promise<boolean> {
    const pipeline = this.deps.redis.pipeline();
    for (const resource of this.deps.adapters.keys())
      pipeline.hexists(this.deps.keys.resourceHandles(resource), handle);
    const answers = (await pipeline.exec()) ?? [];
    // Unsure is not unowned: an error stops the sweep rather than revoke a live credential.
    const failed = answers.find(([error]) => error !== null);
    if (failed) throw failed[0];
    return answers.some(([, owned]) => owned === 1);
  }

  private async sweepOrphans(report: ReconcileReport): Promise<void> {
    const { clock } = this.deps;
    const createdBefore = new Date(clock.now() - this.deps.revocation.staleSeconds * 1000);
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
}
