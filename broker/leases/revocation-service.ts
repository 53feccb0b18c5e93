import type { Redis } from "ioredis";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import { InvalidRequestError } from "../errors.ts";
import { actorOf, type OperatorPrincipal } from "../identity/principal.ts";
import { newId } from "../ids.ts";
import type { RedisKeys } from "../redis.ts";
import type { TaskService } from "../tasks/task-service.ts";
import type { LeaseService } from "./lease-service.ts";

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
  /** Leases moved to `revoking` by this request. */
  matched: number;
  /** Tasks ended as `revoked` by this request. */
  tasksRevoked: number;
}

/**
 * Operator force revocation. Revoking by task, agent or `all` also ends the matching live
 * tasks (status `revoked`) so no new lease can be minted for them; by lease or resource it
 * revokes leases only.
 */
export class RevocationService {
  constructor(
    private readonly deps: {
      redis: Redis;
      keys: RedisKeys;
      leases: LeaseService;
      tasks: TaskService;
      audit: AuditLog;
      clock: Clock;
      /** How long the revocation record is kept; the audit event stays for good. */
      retentionDays: number;
    },
  ) {}

  async revoke(
    selector: RevocationSelector,
    reason: string,
    operator: OperatorPrincipal,
  ): Promise<Revocation> {
    const { redis, keys } = this.deps;
    const set = Object.entries(selector).filter(([, value]) => value !== undefined && value !== false);
    if (set.length !== 1)
      throw new InvalidRequestError("set exactly one of leaseId, taskId, agentId, resource, all");
    const actor = actorOf(operator);
    const id = newId("rev");
    let tasksRevoked = 0;
    let matched = 0;
    for (const taskId of await this.deps.tasks.liveTaskIds(selector)) {
      const closed = await this.deps.tasks.close(taskId, "revoked", actor);
      if (closed) {
        tasksRevoked += 1;
        matched += closed.revoking;
      }
    }
    let leaseIds: string[] = [];
    if (selector.leaseId) leaseIds = [selector.leaseId];
    else if (selector.taskId) leaseIds = await redis.smembers(keys.taskLeases(selector.taskId));
    else if (selector.agentId) leaseIds = await redis.smembers(keys.agentLeases(selector.agentId));
    else if (selector.resource) leaseIds = await redis.smembers(keys.resourceLeases(selector.resource));
    else if (selector.all) {
      leaseIds = [
        ...(await redis.zrange(keys.liveLeases, 0, -1)),
        ...(await redis.zrange(keys.failedLeases, 0, -1)),
      ];
    }
    matched += (await this.deps.leases.requestRevoke(leaseIds, "operator", actor)).length;
    const revocation: Revocation = {
      id,
      selector,
      reason,
      requestedBy: operator.id,
      requestedAt: new Date(this.deps.clock.now()).toISOString(),
      matched,
      tasksRevoked,
    };
    await redis.set(
      keys.revocation(id),
      JSON.stringify(revocation),
      "EX",
      Math.ceil(this.deps.retentionDays * 86_400),
    );
    await this.deps.audit.record({
      type: "revocation_requested",
      actor,
      leaseId: selector.leaseId,
      taskId: selector.taskId,
      agentId: selector.agentId,
      resource: selector.resource,
      reason,
      revocationId: id,
      matched,
      tasksRevoked,
      all: selector.all ?? false,
    });
    return revocation;
  }
}
