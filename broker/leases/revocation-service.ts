import type { Cluster, Redis } from "ioredis";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import { InvalidRequestError } from "../errors.ts";
import { actorOf, type OperatorPrincipal } from "../identity/principal.ts";
import { newId } from "../ids.ts";
import type { RedisKeys } from "../redis.ts";
import type { RecordStore } from "../store/record-store.ts";
import { LIVE_TASK_STATUSES, type Task } from "../tasks/task.ts";
import type { TaskService } from "../tasks/task-service.ts";
import type { Lease } from "./lease.ts";
import type { LeaseRevoker } from "./lease-revoker.ts";

/** Which leases an operator's force revocation targets. Exactly one selector is set. */
export interface RevocationSelector {
  leaseId?: string;
  taskId?: string;
  agentId?: string;
  resource?: string;
  all?: boolean;
}

export interface Revocation {
  id: string;
  selector: RevocationSelector;
  reason: string;
  requestedBy: string;
  requestedAt: string;
  /** Leases sent to revocation by this request. */
  matched: number;
  /** Tasks ended as `revoked` by this request. */
  tasksRevoked: number;
}

/** Lease ids read per batch when revoking by resource or everything. */
const BATCH = 500;

/**
 * Operator force revocation. Revoking by task, agent or `all` also ends the matching live
 * tasks (status `revoked`) so no new lease can be minted for them, and sends every lease they
 * still hold — of closed tasks too — back through revocation; by lease or resource it revokes
 * leases only.
 */
export class RevocationService {
  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      tasks: TaskService;
      taskStore: RecordStore<Task>;
      leaseStore: RecordStore<Lease>;
      revoker: LeaseRevoker;
      audit: AuditLog;
      clock: Clock;
      /** How long the revocation record is kept; the audit event stays for the audit retention. */
      retentionDays: number;
    },
  ) {}

  async revoke(
    selector: RevocationSelector,
    reason: string,
    operator: OperatorPrincipal,
  ): Promise<Revocation> {
    const set = Object.entries(selector).filter(([, value]) => value !== undefined && value !== false);
    if (set.length !== 1)
      throw new InvalidRequestError("set exactly one of leaseId, taskId, agentId, resource, all");
    const actor = actorOf(operator);
    const requestedAt = new Date(this.deps.clock.now()).toISOString();
    const counts =
      selector.leaseId || selector.resource
        ? {
            matched: await this.revokeLeases(selector, {
              reason: "operator",
              requestedAt,
              requestedBy: actor,
            }),
            tasksRevoked: 0,
          }
        : await this.revokeTasks(selector, actor);
    const revocation: Revocation = {
      id: newId("rev"),
      selector,
      reason,
      requestedBy: operator.id,
      requestedAt,
      ...counts,
    };
    await this.deps.redis.set(
      this.deps.keys.revocation(revocation.id),
      JSON.stringify(revocation),
      "EX",
      Math.ceil(this.deps.retentionDays * 86_400),
    );
    // Filed under the lease's task too, so the lease's trail shows who asked.
    const leaseTask = selector.leaseId
      ? (await this.deps.leaseStore.get(selector.leaseId))?.taskId
      : undefined;
    await this.deps.audit.record({
      type: "revocation_requested",
      actor,
      leaseId: selector.leaseId,
      taskId: selector.taskId ?? leaseTask,
      agentId: selector.agentId,
      resource: selector.resource,
      reason,
      revocationId: revocation.id,
      matched: revocation.matched,
      tasksRevoked: revocation.tasksRevoked,
      all: selector.all ?? false,
    });
    return revocation;
  }

  /** By lease id, or every lease of a resource that is not yet revoked. */
  private async revokeLeases(
    selector: RevocationSelector,
    request: Parameters<LeaseRevoker["request"]>[1],
  ): Promise<number> {
    if (selector.leaseId) return (await this.deps.revoker.request([selector.leaseId], request)).length;
    const resource = selector.resource as string;
    let matched = 0;
    for (const shard of this.deps.keys.shards) {
      const ids = await this.deps.redis.zrange(shard.resourceLeases(resource), 0, -1);
      for (let at = 0; at < ids.length; at += BATCH) {
        const batch = ids.slice(at, at + BATCH);
        // Only leases still live or failed are worth reading: the index keeps revoked ones for retention.
        const [live, failed] = await Promise.all([
          this.deps.redis.zmscore(shard.liveLeases, ...batch),
          this.deps.redis.zmscore(shard.failedLeases, ...batch),
        ]);
        const open = batch.filter((_, i) => live[i] !== null || failed[i] !== null);
        if (open.length > 0) matched += (await this.deps.revoker.request(open, request)).length;
      }
    }
    return matched;
  }

  /** By task, agent or all: ends the live tasks and revokes whatever their leases still hold. */
  private async revokeTasks(
    selector: RevocationSelector,
    actor: string,
  ): Promise<{ matched: number; tasksRevoked: number }> {
    const taskIds = selector.taskId ? [selector.taskId] : await this.deps.tasks.taskIds(selector);
    let matched = 0;
    let tasksRevoked = 0;
    for (let at = 0; at < taskIds.length; at += BATCH) {
      const tasks = await this.deps.taskStore.getMany(taskIds.slice(at, at + BATCH));
      for (const task of tasks) {
        const closed = LIVE_TASK_STATUSES.includes(task.status)
          ? await this.deps.tasks.close(task.id, "revoked", actor)
          : undefined;
        if (closed) {
          tasksRevoked += 1;
          matched += closed.revoking;
        } else {
          matched += await this.deps.tasks.revokeRemainingLeases(task.id);
        }
      }
    }
    if (selector.all) {
      // Read after closing: what is still live or failed now belongs to tasks that ended before.
      const request = {
        reason: "operator" as const,
        requestedAt: new Date(this.deps.clock.now()).toISOString(),
        requestedBy: actor,
      };
      for (const shard of this.deps.keys.shards) {
        const ids = [
          ...(await this.deps.redis.zrange(shard.liveLeases, 0, -1)),
          ...(await this.deps.redis.zrange(shard.failedLeases, 0, -1)),
        ];
        for (let at = 0; at < ids.length; at += BATCH)
          matched += (await this.deps.revoker.request(ids.slice(at, at + BATCH), request)).length;
      }
    }
    return { matched, tasksRevoked };
  }
}
