import type { Cluster, Redis } from "ioredis";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import { ForbiddenError, NotFoundError } from "../errors.ts";
import { type AgentPrincipal, actorOf, type Principal } from "../identity/principal.ts";
import type { RedisKeys, ShardKeys } from "../redis.ts";
import type { RecordStore } from "../store/record-store.ts";
import type { Lease, LeaseStatus } from "./lease.ts";
import type { LeaseMinter } from "./lease-minter.ts";
import type { LeaseRenewer } from "./lease-renewer.ts";
import type { LeaseRevoker } from "./lease-revoker.ts";

export interface LeaseFilter {
  status?: LeaseStatus;
  taskId?: string;
  agentId?: string;
  resource?: string;
  limit: number;
}

/** Which index lists leases of a status. */
const STATUS_INDEX: Partial<Record<LeaseStatus, (shard: ShardKeys) => string>> = {
  issuing: (shard) => shard.liveLeases,
  active: (shard) => shard.liveLeases,
  revoking: (shard) => shard.revokingLeases,
  revoke_failed: (shard) => shard.failedLeases,
};

/** Leases as the API sees them: mint, read, list, release. */
export class LeaseService {
  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      leases: RecordStore<Lease>;
      minter: LeaseMinter;
      renewer: LeaseRenewer;
      revoker: LeaseRevoker;
      audit: AuditLog;
      clock: Clock;
    },
  ) {}

  /** Mints a credential for an approved task (see {@link LeaseMinter}). */
  mint(...args: Parameters<LeaseMinter["mint"]>): ReturnType<LeaseMinter["mint"]> {
    return this.deps.minter.mint(...args);
  }

  /** Extends the agent's own active lease (see {@link LeaseRenewer}). */
  async renew(leaseId: string, agent: AgentPrincipal, request: { ttlSeconds?: number }): Promise<Lease> {
    return this.deps.renewer.renew(agent, await this.get(leaseId, agent), request);
  }

  /** A lease, if the principal may see it. */
  async get(leaseId: string, principal: Principal): Promise<Lease> {
    const lease = await this.deps.leases.get(leaseId);
    if (!lease) throw new NotFoundError("lease");
    if (principal.kind === "operator") return lease;
    if (principal.kind === "agent" && principal.id === lease.agentId) return lease;
    await this.deps.audit.record({
      type: "access_denied",
      actor: actorOf(principal),
      // Filed under the agent that tried, so its audit trail shows the attempt.
      agentId: principal.kind === "agent" ? principal.id : undefined,
      ownerAgentId: lease.agentId,
      taskId: lease.taskId,
      leaseId,
      decision: "deny",
      reason: `${actorOf(principal)} does not own this lease`,
    });
    throw new ForbiddenError("only the owning agent or an operator may see this lease");
  }

  /** Leases newest first, by the most selective index the filter allows. */
  async list(filter: LeaseFilter): Promise<Lease[]> {
    const { redis, keys } = this.deps;
    const window = filter.limit * 10;
    let ids: string[];
    if (filter.taskId) {
      ids = await redis.zrevrange(keys.forId(filter.taskId).taskLeases(filter.taskId), 0, window - 1);
    } else if (filter.agentId) {
      const agentId = filter.agentId;
      const taskIds = (
        await Promise.all(
          keys.shards.map((shard) => redis.zrevrange(shard.agentTasks(agentId), 0, window - 1)),
        )
      ).flat();
      ids = (
        await Promise.all(
          taskIds.map((taskId) => redis.zrevrange(keys.forId(taskId).taskLeases(taskId), 0, window - 1)),
        )
      ).flat();
    } else {
      const indexOf = (shard: ShardKeys): string =>
        filter.resource
          ? shard.resourceLeases(filter.resource)
          : ((filter.status && STATUS_INDEX[filter.status]?.(shard)) ?? shard.allLeases);
      ids = (
        await Promise.all(keys.shards.map((shard) => redis.zrevrange(indexOf(shard), 0, window - 1)))
      ).flat();
    }
    const leases = await this.deps.leases.getMany(ids);
    return leases
      .filter(
        (lease) =>
          (!filter.status || lease.status === filter.status) &&
          (!filter.taskId || lease.taskId === filter.taskId) &&
          (!filter.agentId || lease.agentId === filter.agentId) &&
          (!filter.resource || lease.resource === filter.resource),
      )
      .sort((a, b) => b.issuedAt.localeCompare(a.issuedAt))
      .slice(0, filter.limit);
  }

  /** Early release by the owning agent or an operator: revoked now. */
  async release(leaseId: string, principal: Principal): Promise<Lease> {
    const lease = await this.get(leaseId, principal);
    const [moved] = await this.deps.revoker.request([lease.id], {
      reason: principal.kind === "operator" ? "operator" : "released",
      requestedAt: new Date(this.deps.clock.now()).toISOString(),
      requestedBy: actorOf(principal),
    });
    return moved ?? ((await this.deps.leases.get(leaseId)) as Lease);
  }
}
