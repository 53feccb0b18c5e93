import type { Redis } from "ioredis";
import type { Logger } from "winston";
import { AdapterError, type CredentialAdapter, type IssuedCredential } from "../../adapters/types.ts";
import type { RevocationQueue } from "../../jobs/queues.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import type { Config } from "../config.ts";
import {
  AdapterUnavailableError,
  ForbiddenError,
  type JitkeyError,
  LeaseRevokedError,
  NotFoundError,
  PolicyDeniedError,
  TaskClosedError,
  TaskNotApprovedError,
} from "../errors.ts";
import { type AgentPrincipal, actorOf, type Principal } from "../identity/principal.ts";
import { newId } from "../ids.ts";
import type { Metrics } from "../metrics.ts";
import type { PolicyEngine } from "../policy/policy-engine.ts";
import type { RecordStore, RedisKeys } from "../redis.ts";
import type { Task } from "../tasks/task.ts";
import type { Lease, LeaseStatus, RevokeReason } from "./lease.ts";

/** What the revocation job tells the lease service about the attempt it is making. */
export interface RevokeAttempt {
  /** The job is the lease's scheduled expiry. */
  expiry: boolean;
  /** This is the last attempt the job will make. */
  final: boolean;
}

export interface LeaseFilter {
  status?: LeaseStatus;
  taskId?: string;
  agentId?: string;
  resource?: string;
  limit: number;
}

export interface LeaseServiceDeps {
  redis: Redis;
  keys: RedisKeys;
  leases: RecordStore<Lease>;
  tasks: RecordStore<Task>;
  policy: PolicyEngine;
  adapters: ReadonlyMap<string, CredentialAdapter>;
  queue: RevocationQueue;
  audit: AuditLog;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  config: Pick<Config, "retention">;
}

/**
 * Mints and revokes leases. The HTTP routes and the revocation jobs both go through here.
 *
 * Mint order is crash-safe: the lease is written as `issuing` with its expiry job scheduled
 * before the adapter is asked for anything, and adapters name what they create after the
 * lease id, so whatever happens next, the revocation path can find and remove it.
 */
export class LeaseService {
  constructor(private readonly deps: LeaseServiceDeps) {}

  /** Mints a credential for an approved task. The secret is returned here and nowhere else. */
  async mint(
    agent: AgentPrincipal,
    taskId: string,
    request: { resource: string; scopes?: string[]; ttlSeconds?: number },
  ): Promise<{ lease: Lease; credential: IssuedCredential["credential"] }> {
    const { audit, clock, policy, metrics } = this.deps;
    const denied = async (error: JitkeyError): Promise<never> => {
      metrics.denials.inc({ decision: "lease", code: error.code });
      await audit.record({
        type: "lease_denied",
        actor: actorOf(agent),
        agentId: agent.id,
        taskId,
        resource: request.resource,
        decision: "deny",
        reason: error instanceof PolicyDeniedError ? error.reason : error.message,
      });
      throw error;
    };
    const task = await this.deps.tasks.get(taskId);
    if (!task) return denied(new NotFoundError("task"));
    // Minting on someone else's task is credential reuse across tasks: refused, and on record.
    if (task.agentId !== agent.id)
      return denied(new ForbiddenError("only the agent that created the task may mint for it"));
    if (task.status === "pending") return denied(new TaskNotApprovedError(taskId));
    const now = clock.now();
    if (task.status !== "approved") return denied(new TaskClosedError(taskId, task.status));
    if (Date.parse(task.expiresAt) <= now) return denied(new TaskClosedError(taskId, "expired"));

    let decision: ReturnType<PolicyEngine["evaluateLease"]>;
    try {
      decision = policy.evaluateLease(agent.id, task, request);
    } catch (error) {
      if (error instanceof PolicyDeniedError) return denied(error);
      throw error;
    }
    const resource = policy.resource(request.resource);
    const adapter = this.deps.adapters.get(request.resource);
    if (!resource || !adapter)
      return denied(new PolicyDeniedError(`resource ${request.resource} is not configured`));

    // A lease never outlives its task; expiry is whole seconds because JWT `exp` is.
    const ttlMs = (request.ttlSeconds ?? decision.maxTtlSeconds) * 1000;
    const expiresAtMs = Math.floor(Math.min(now + ttlMs, Date.parse(task.expiresAt)) / 1000) * 1000;
    if (expiresAtMs <= now) return denied(new TaskClosedError(taskId, "expiring"));
    const lease: Lease = {
      id: newId("lse"),
      tenant: task.tenant,
      taskId,
      agentId: agent.id,
      resource: resource.name,
      adapter: adapter.kind,
      scopes: decision.scopes,
      issuedAt: new Date(now).toISOString(),
      expiresAt: new Date(expiresAtMs).toISOString(),
      status: "issuing",
      revocable: adapter.capabilities.revocation !== "none",
      revocation: adapter.capabilities.revocation,
    };
    await this.writeIssuing(lease, now);

    // The task may have closed while the lease was being written: completion reads the task's
    // lease set after closing the task, so either it saw this lease or this read sees it closed.
    const current = await this.deps.tasks.get(taskId);
    if (current?.status !== "approved") {
      await this.requestRevoke(
        [lease.id],
        current?.status === "completed" ? "task_completed" : "policy",
        "system",
      );
      return denied(new TaskClosedError(taskId, current?.status ?? "missing"));
    }

    let issued: IssuedCredential;
    try {
      issued = await adapter.issue({
        leaseId: lease.id,
        taskId,
        agentId: agent.id,
        resource: resource.name,
        scopes: lease.scopes,
        expiresAt: new Date(expiresAtMs),
      });
    } catch (error) {
      metrics.issueFailures.inc({ resource: resource.name });
      const reason = error instanceof AdapterError ? error.message : "adapter failed";
      this.deps.logger.warn("adapter issue failed", {
        leaseId: lease.id,
        resource: resource.name,
        error: reason,
      });
      // Whatever the adapter created before failing is named after the lease id: revoke it.
      await this.requestRevoke([lease.id], "issue_failed", "system");
      await audit.record({
        type: "lease_issue_failed",
        actor: actorOf(agent),
        agentId: agent.id,
        taskId,
        leaseId: lease.id,
        resource: resource.name,
        decision: "deny",
        reason,
      });
      throw new AdapterUnavailableError(`${resource.name}: ${reason}`);
    }

    const expiresAt =
      issued.expiresAt && issued.expiresAt.getTime() < expiresAtMs ? issued.expiresAt : new Date(expiresAtMs);
    // The handle is indexed before the lease turns active, so a release racing with this mint
    // removes it after it was added, never before.
    if (issued.handle)
      await this.deps.redis.hset(this.deps.keys.resourceHandles(resource.name), issued.handle, lease.id);
    const activated = await this.deps.leases.transition(lease.id, ["issuing"], {
      status: "active",
      handle: issued.handle,
      references: issued.references,
      expiresAt: expiresAt.toISOString(),
    });
    if (!activated.changed) {
      // Revoked while the adapter worked (task completed, operator, reconciler). That revocation
      // may have run before the credential existed, so revoke what just arrived, here.
      await this.revokeLateIssue(lease, adapter, issued);
      const taskNow = await this.deps.tasks.get(taskId);
      return denied(
        taskNow?.status === "approved"
          ? new LeaseRevokedError(lease.id)
          : new TaskClosedError(taskId, taskNow?.status ?? "missing"),
      );
    }
    if (expiresAt.getTime() < expiresAtMs) {
      // The backend granted less than asked: the lease's revocation moves up to match.
      await this.deps.redis.zadd(this.deps.keys.liveLeases, expiresAt.getTime(), lease.id);
      await this.deps.queue.cancelLeaseExpiry(lease.id);
      await this.deps.queue.scheduleLeaseExpiry(lease.id, expiresAt, clock.now());
    }
    metrics.leasesMinted.inc({ resource: resource.name, adapter: adapter.kind });
    await audit.record({
      type: "lease_issued",
      actor: actorOf(agent),
      agentId: agent.id,
      taskId,
      leaseId: lease.id,
      resource: resource.name,
      decision: "allow",
      reason: `rule ${policy.ruleName(decision.rule)}`,
      scopes: lease.scopes,
      expiresAt: expiresAt.toISOString(),
    });
    return { lease: activated.record as Lease, credential: issued.credential };
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
    let ids: string[];
    if (filter.taskId) ids = await redis.smembers(keys.taskLeases(filter.taskId));
    else if (filter.agentId) ids = await redis.smembers(keys.agentLeases(filter.agentId));
    else if (filter.resource) ids = await redis.smembers(keys.resourceLeases(filter.resource));
    else if (filter.status && filter.status !== "revoked") {
      const index = filter.status === "revoke_failed" ? keys.failedLeases : keys.liveLeases;
      ids = await redis.zrange(index, 0, -1);
    } else ids = await redis.zrevrange(keys.allLeases, 0, filter.limit * 10 - 1);
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

  /** Early release by the owning agent or an operator. */
  async release(leaseId: string, principal: Principal): Promise<Lease> {
    const lease = await this.get(leaseId, principal);
    const [moved] = await this.requestRevoke(
      [lease.id],
      principal.kind === "operator" ? "operator" : "released",
      actorOf(principal),
    );
    return moved ?? ((await this.deps.leases.get(leaseId)) as Lease);
  }

  /**
   * Moves leases to `revoking` and enqueues their revocation (one `addBulk`). A lease already
   * revoking is left to the job that owns it; a `revoke_failed` lease gets a new round.
   * Returns the leases this call moved.
   */
  async requestRevoke(
    leaseIds: string[],
    reason: RevokeReason,
    actor: string,
    dueAt?: Date,
  ): Promise<Lease[]> {
    const now = (dueAt ?? new Date(this.deps.clock.now())).toISOString();
    const moved: Lease[] = [];
    for (const id of leaseIds) {
      const current = await this.deps.leases.get(id);
      if (!current || !["issuing", "active", "revoke_failed"].includes(current.status)) continue;
      const round = (current.revokeRound ?? 0) + 1;
      // A retry after revoke_failed is the same revocation: keep who asked, when and why.
      const retry = current.status === "revoke_failed";
      const result = await this.deps.leases.transition(id, [current.status], {
        status: "revoking",
        revokeReason: retry ? (current.revokeReason ?? reason) : reason,
        revokeRequestedAt: retry ? (current.revokeRequestedAt ?? now) : now,
        revokeRequestedBy: retry ? (current.revokeRequestedBy ?? actor) : actor,
        revokeRound: round,
      });
      if (result.changed && result.record) moved.push(result.record);
    }
    await this.deps.queue.revokeNow(moved);
    for (const lease of moved) {
      await this.deps.audit.record({
        type: "lease_revoke_requested",
        actor,
        agentId: lease.agentId,
        taskId: lease.taskId,
        leaseId: lease.id,
        resource: lease.resource,
        reason: lease.revokeReason,
      });
    }
    return moved;
  }

  /**
   * Revokes one lease through its adapter; called by the revocation job. Idempotent.
   * Throws to make the job retry; on the final attempt (or a permanent adapter error) the
   * lease is marked `revoke_failed`, counted and audited before the error propagates.
   */
  async revokeFromJob(leaseId: string, attempt: RevokeAttempt): Promise<"revoked" | "skipped"> {
    const { leases, clock } = this.deps;
    let lease = await leases.get(leaseId);
    if (!lease || lease.status === "revoked") return "skipped";
    if (lease.status === "issuing" || lease.status === "active") {
      if (!attempt.expiry) return "skipped";
      // Either status: a mint may activate the lease between the read above and this write.
      const moved = await leases.transition(leaseId, ["issuing", "active"], {
        status: "revoking",
        revokeReason: "expired",
        revokeRequestedAt: lease.expiresAt,
        revokeRequestedBy: "system",
        revokeRound: (lease.revokeRound ?? 0) + 1,
      });
      if (!moved.changed || !moved.record) return "skipped";
      lease = moved.record;
    } else if (attempt.expiry && lease.status === "revoke_failed") {
      return "skipped";
    }
    const adapter = this.deps.adapters.get(lease.resource);
    try {
      if (!adapter)
        throw new AdapterError(`resource ${lease.resource} is no longer configured`, { permanent: true });
      await adapter.revoke({
        leaseId: lease.id,
        resource: lease.resource,
        handle: lease.handle,
        references: lease.references,
      });
    } catch (error) {
      const permanent = error instanceof AdapterError && error.permanent;
      if (permanent || attempt.final) await this.markRevokeFailed(lease, error);
      throw error;
    }
    const revokedAt = clock.now();
    // Only this round may settle the lease: a newer round (a credential that arrived after this
    // revoke ran) must not be marked revoked by an older job.
    const done = await leases.transition(
      lease.id,
      ["revoking", "revoke_failed"],
      { status: "revoked", revokedAt: new Date(revokedAt).toISOString() },
      { revokeRound: lease.revokeRound },
    );
    if (!done.changed) return "skipped";
    await this.afterRevoked(lease, revokedAt);
    return "revoked";
  }

  /**
   * Takes a revoked lease out of the live indexes and starts its retention clock. Idempotent:
   * the reconciler calls it again for a revoked lease a crash left half tidied.
   */
  async tidyRevoked(lease: Lease): Promise<void> {
    const { redis, keys } = this.deps;
    const pipeline = redis.pipeline();
    pipeline.zrem(keys.liveLeases, lease.id);
    pipeline.zrem(keys.failedLeases, lease.id);
    if (lease.handle) pipeline.hdel(keys.resourceHandles(lease.resource), lease.handle);
    await pipeline.exec();
    await this.deps.leases.expireAfter(lease.id, this.deps.config.retention.leaseRecordDays * 86_400);
  }

  private async afterRevoked(lease: Lease, revokedAt: number): Promise<void> {
    const { metrics, audit } = this.deps;
    await this.tidyRevoked(lease);
    if (lease.revokeReason !== "expired") await this.deps.queue.cancelLeaseExpiry(lease.id);
    const reason = lease.revokeReason ?? "expired";
    const dueAt = Date.parse(lease.revokeRequestedAt ?? lease.expiresAt);
    const lagSeconds = Math.max(0, (revokedAt - dueAt) / 1000);
    metrics.revocations.inc({ reason, resource: lease.resource });
    metrics.revokeLag.observe({ reason }, lagSeconds);
    await audit.record({
      type: "lease_revoked",
      actor: lease.revokeRequestedBy ?? "system",
      agentId: lease.agentId,
      taskId: lease.taskId,
      leaseId: lease.id,
      resource: lease.resource,
      reason,
      lagSeconds,
    });
  }

  /**
   * Revokes a credential the adapter returned after its lease had left `issuing`. If that
   * fails, the lease (with the handle) is marked `revoke_failed` so the reconciler retries it.
   */
  private async revokeLateIssue(
    lease: Lease,
    adapter: CredentialAdapter,
    issued: IssuedCredential,
  ): Promise<void> {
    const { handle, references } = issued;
    try {
      await adapter.revoke({ leaseId: lease.id, resource: lease.resource, handle, references });
      if (handle) await this.deps.redis.hdel(this.deps.keys.resourceHandles(lease.resource), handle);
    } catch (error) {
      // A new round: whatever job of an earlier round is still running may no longer settle it.
      // Retried a few times because such a job may move the lease between our read and write.
      let reopened: { changed: boolean; record?: Lease } = { changed: false };
      for (let attempt = 0; attempt < 5 && !reopened.changed; attempt++) {
        const current = await this.deps.leases.get(lease.id);
        if (!current) return;
        reopened = await this.deps.leases.transition(
          lease.id,
          [current.status],
          { status: "revoking", handle, references, revokeRound: (current.revokeRound ?? 0) + 1 },
          { revokeRound: current.revokeRound },
        );
      }
      if (!reopened.changed || !reopened.record) throw error;
      // A live credential again: no retention expiry, back in the live index with its handle,
      // so the reconciler keeps retrying it until it is gone.
      await this.deps.leases.persist(lease.id);
      const pipeline = this.deps.redis
        .pipeline()
        .zadd(this.deps.keys.liveLeases, Date.parse(reopened.record.expiresAt), lease.id);
      if (handle) pipeline.hset(this.deps.keys.resourceHandles(lease.resource), handle, lease.id);
      await pipeline.exec();
      await this.markRevokeFailed(reopened.record, error);
    }
  }

  private async markRevokeFailed(lease: Lease, error: unknown): Promise<void> {
    const now = this.deps.clock.now();
    const message = error instanceof Error ? error.message : "revoke failed";
    const marked = await this.deps.leases.transition(
      lease.id,
      ["revoking"],
      { status: "revoke_failed", revokeFailedAt: new Date(now).toISOString(), lastError: message },
      { revokeRound: lease.revokeRound },
    );
    if (!marked.changed) return;
    await this.deps.redis.zadd(this.deps.keys.failedLeases, now, lease.id);
    this.deps.metrics.revokeFailures.inc({ resource: lease.resource });
    this.deps.logger.error("lease revoke failed", {
      leaseId: lease.id,
      resource: lease.resource,
      error: message,
    });
    await this.deps.audit.record({
      type: "lease_revoke_failed",
      actor: "system",
      agentId: lease.agentId,
      taskId: lease.taskId,
      leaseId: lease.id,
      resource: lease.resource,
      reason: message,
    });
  }

  /** Writes a new `issuing` lease, its indexes and its expiry job, before any adapter call. */
  private async writeIssuing(lease: Lease, now: number): Promise<void> {
    const { redis, keys } = this.deps;
    const expiresAtMs = Date.parse(lease.expiresAt);
    // The record and its indexes land together, so the reconciler sees every lease that exists.
    const results = await this.deps.leases
      .createIn(redis.multi(), lease)
      .sadd(keys.taskLeases(lease.taskId), lease.id)
      .sadd(keys.agentLeases(lease.agentId), lease.id)
      .sadd(keys.resourceLeases(lease.resource), lease.id)
      .zadd(keys.allLeases, now, lease.id)
      .zadd(keys.liveLeases, expiresAtMs, lease.id)
      .exec();
    if (results?.[0]?.[1] !== "OK") throw new Error(`lease ${lease.id} could not be written`);
    await this.deps.queue.scheduleLeaseExpiry(lease.id, new Date(expiresAtMs), now);
  }
}
