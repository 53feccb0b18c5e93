import { AdapterError, type CredentialAdapter, type IssuedCredential } from "../../adapters/types.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import { setBounded } from "../bounded-map.ts";
import type { Clock } from "../clock.ts";
import type { ResourceConfig } from "../config.ts";
import {
  AdapterUnavailableError,
  ForbiddenError,
  InvalidRequestError,
  type JitkeyError,
  LeaseRevokedError,
  NotFoundError,
  PolicyDeniedError,
  TaskClosedError,
  TaskNotApprovedError,
} from "../errors.ts";
import { type AgentPrincipal, actorOf } from "../identity/principal.ts";
import { newId } from "../ids.ts";
import type { Logger } from "../logger.ts";
import type { Metrics } from "../metrics.ts";
import { credentialClaims } from "../oauth/credential-claims.ts";
import type { LeaseDecision, PolicyEngine } from "../policy/policy-engine.ts";
import { policyIdsOf } from "../policy/policy-errors.ts";
import { QuotaExceededError, type Quotas, type Reservation } from "../quotas/quotas.ts";
import type { RecordStore } from "../store/record-store.ts";
import type { Task } from "../tasks/task.ts";
import type { Lease } from "./lease.ts";
import type { LeaseRevoker } from "./lease-revoker.ts";
import type { LeaseStates } from "./lease-states.ts";

/** What an agent asks for when minting. */
export interface MintRequest {
  resource: string;
  scopes?: string[];
  ttlSeconds?: number;
  /** Bind the credential to this key (a verified DPoP proof's thumbprint). */
  binding?: { jkt: string };
  /** Where the request came from, for policies that decide by address. */
  sourceAddress?: string;
}

export interface LeaseMinterDeps {
  tasks: RecordStore<Task>;
  leases: RecordStore<Lease>;
  states: LeaseStates;
  revoker: LeaseRevoker;
  policy: PolicyEngine;
  adapters: ReadonlyMap<string, CredentialAdapter>;
  audit: AuditLog;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  /** Live-lease quotas; none when absent. */
  quotas?: Pick<Quotas, "reserveLease">;
}

/** What policy and the adapter allow for one mint. */
interface MintPlan {
  task: Task;
  resource: ResourceConfig;
  adapter: CredentialAdapter;
  decision: LeaseDecision;
  lease: Lease;
}

/**
 * Mints credentials. The order is what makes it crash-safe: the lease is written as
 * `issuing`, with its place in the due index, before the adapter is asked for anything, and
 * adapters name what they create after the lease id — so whatever happens next, the
 * revocation path can find and remove it.
 */
export class LeaseMinter {
  /**
   * Approved tasks as last read. What policy checks of a task (its resources, scopes,
   * classification, end, claims) no longer changes once it is approved; its status still
   * does, and the issuing write checks that atomically — so a stale entry can only make a
   * mint read the task again, never let one through.
   */
  readonly #approved = new Map<string, Task>();

  constructor(private readonly deps: LeaseMinterDeps) {}

  /** Mints a credential for an approved task. The secret is returned here and nowhere else. */
  async mint(
    agent: AgentPrincipal,
    taskId: string,
    request: MintRequest,
  ): Promise<{ lease: Lease; credential: IssuedCredential["credential"] }> {
    const denied = (error: JitkeyError) => this.deny(agent, taskId, request, error);
    const task = await this.approvedTask(agent, taskId, denied);
    const plan = await this.plan(agent, task, request, denied);
    const slots = await this.reserveQuota(plan, denied);
    const released = async (error: unknown): Promise<never> => {
      await slots.release();
      throw error;
    };
    if (plan.adapter.capabilities.issuesLocally) {
      // Nothing exists outside the broker until the lease is written: one write, after issue.
      const issued = await this.issue(agent, plan).catch(released);
      return this.activate(agent, plan, issued, denied, { local: true }).catch(released);
    }
    await this.writeIssuing(plan, denied).catch(released);
    const issued = await this.issue(agent, plan);
    return this.activate(agent, plan, issued, denied, { local: false });
  }

  /** The task, if it is the agent's, approved and unexpired. */
  private async approvedTask(
    agent: AgentPrincipal,
    taskId: string,
    denied: (error: JitkeyError) => Promise<never>,
  ): Promise<Task> {
    const task = this.#approved.get(taskId) ?? (await this.deps.tasks.get(taskId));
    if (!task) return denied(new NotFoundError("task"));
    // Minting on someone else's task is credential reuse across tasks: refused, and on record.
    if (task.agentId !== agent.id)
      return denied(new ForbiddenError("only the agent that created the task may mint for it"));
    return this.checkLive(task, denied);
  }

  private checkLive(task: Task, denied: (error: JitkeyError) => Promise<never>): Promise<Task> | Task {
    if (task.status === "approved" && Date.parse(task.expiresAt) > this.deps.clock.now()) {
      this.remember(task);
      return task;
    }
    this.#approved.delete(task.id);
    if (task.status === "pending") return denied(new TaskNotApprovedError(task.id));
    if (task.status !== "approved") return denied(new TaskClosedError(task.id, task.status));
    return denied(new TaskClosedError(task.id, "expired"));
  }

  private remember(task: Task): void {
    if (this.#approved.has(task.id)) return;
    setBounded(this.#approved, task.id, task, 10_000);
  }

  /** Policy as it is now, the adapter's limits, and the lease they allow. */
  private async plan(
    agent: AgentPrincipal,
    task: Task,
    request: MintRequest,
    denied: (error: JitkeyError) => Promise<never>,
  ): Promise<MintPlan> {
    const { policy, clock } = this.deps;
    let decision: LeaseDecision;
    try {
      decision = policy.evaluateLease(agent, task, request, { sourceAddress: request.sourceAddress });
    } catch (error) {
      if (error instanceof PolicyDeniedError) return denied(error);
      throw error;
    }
    const resource = policy.resource(request.resource);
    const adapter = this.deps.adapters.get(request.resource);
    if (!resource || !adapter)
      return denied(new PolicyDeniedError(`resource ${request.resource} is not configured`));
    if (request.binding && !adapter.capabilities.tokenClaims)
      return denied(new InvalidRequestError(`credentials of ${resource.name} cannot be bound to a DPoP key`));
    // A backend that cannot revoke, or cannot issue for longer, caps the lease.
    const maxTtlSeconds = Math.min(
      decision.maxTtlSeconds,
      adapter.capabilities.maxTtlSeconds ?? Number.POSITIVE_INFINITY,
    );
    if (request.ttlSeconds !== undefined && request.ttlSeconds > maxTtlSeconds)
      return denied(
        new PolicyDeniedError(
          `ttlSeconds ${request.ttlSeconds} exceeds the maximum of ${maxTtlSeconds} for ${resource.name}`,
        ),
      );
    const now = clock.now();
    // A lease never outlives its task; expiry is whole seconds because JWT `exp` is.
    const ttlMs = (request.ttlSeconds ?? maxTtlSeconds) * 1000;
    const expiresAtMs = Math.floor(Math.min(now + ttlMs, Date.parse(task.expiresAt)) / 1000) * 1000;
    if (expiresAtMs <= now) return denied(new TaskClosedError(task.id, "expiring"));
    const lease: Lease = {
      id: newId("lse", { sameShardAs: task.id }),
      tenant: task.tenant,
      taskId: task.id,
      agentId: agent.id,
      resource: resource.name,
      adapter: adapter.kind,
      scopes: decision.scopes,
      issuedAt: new Date(now).toISOString(),
      expiresAt: new Date(expiresAtMs).toISOString(),
      status: "issuing",
      revocable: adapter.capabilities.revocation !== "none",
      revocation: adapter.capabilities.revocation,
      ...(request.binding ? { dpopJkt: request.binding.jkt } : {}),
    };
    return { task, resource, adapter, decision, lease };
  }

  /**
   * The lease's slots in the live-lease quotas, taken before the lease is written (see
   * `broker/quotas/quotas.ts`); a full quota is a denial like any other.
   */
  private async reserveQuota(
    plan: MintPlan,
    denied: (error: JitkeyError) => Promise<never>,
  ): Promise<Reservation> {
    if (!this.deps.quotas) return { release: async () => {} };
    try {
      return await this.deps.quotas.reserveLease(plan.lease);
    } catch (error) {
      if (error instanceof QuotaExceededError) return denied(error);
      throw error;
    }
  }

  /** The lease and its indexes, atomically with a check that the task is still approved. */
  private async writeIssuing(plan: MintPlan, denied: (error: JitkeyError) => Promise<never>): Promise<void> {
    const nowIso = new Date(this.deps.clock.now()).toISOString();
    const written = await this.deps.audit.apply(this.deps.states.issue(plan.lease, nowIso));
    if (written.ok) return;
    // The task changed since it was read (completed, revoked, expired) or vanished.
    this.#approved.delete(plan.task.id);
    const task = written.record ? (JSON.parse(written.record) as Task) : undefined;
    if (!task) await denied(new NotFoundError("task"));
    else await this.checkLive(task, denied);
    throw new Error(`lease ${plan.lease.id} could not be written`);
  }

  /** Asks the adapter; on failure whatever it created (named after the lease id) is revoked. */
  private async issue(agent: AgentPrincipal, plan: MintPlan): Promise<IssuedCredential> {
    const { lease, adapter } = plan;
    try {
      return await adapter.issue({
        leaseId: lease.id,
        taskId: lease.taskId,
        agentId: agent.id,
        resource: lease.resource,
        scopes: lease.scopes,
        expiresAt: new Date(lease.expiresAt),
        claims: credentialClaims(plan.task, lease),
        ...(lease.dpopJkt ? { binding: { jkt: lease.dpopJkt } } : {}),
      });
    } catch (error) {
      this.deps.metrics.issueFailures.inc({ resource: lease.resource });
      const reason = error instanceof AdapterError ? error.message : "adapter failed";
      this.deps.logger.warn("adapter issue failed", {
        leaseId: lease.id,
        resource: lease.resource,
        error: reason,
      });
      await this.deps.revoker.request([lease.id], {
        reason: "issue_failed",
        requestedAt: new Date(this.deps.clock.now()).toISOString(),
        requestedBy: "system",
      });
      await this.deps.audit.record({
        type: "lease_issue_failed",
        actor: actorOf(agent),
        agentId: agent.id,
        taskId: lease.taskId,
        leaseId: lease.id,
        resource: lease.resource,
        decision: "deny",
        reason,
      });
      throw new AdapterUnavailableError(`${lease.resource}: ${reason}`);
    }
  }

  /** issuing → active with the handle, and the `lease_issued` event, in one write. */
  /**
   * The lease becomes `active` with the handle, and its `lease_issued` event, in one write:
   * issuing → active, or (`local`) written for the first time, already active.
   */
  private async activate(
    agent: AgentPrincipal,
    plan: MintPlan,
    issued: IssuedCredential,
    denied: (error: JitkeyError) => Promise<never>,
    mode: { local: boolean },
  ): Promise<{ lease: Lease; credential: IssuedCredential["credential"] }> {
    const { lease, adapter, decision } = plan;
    const leaseEnd = Date.parse(lease.expiresAt);
    // The backend may grant less than asked: the lease then ends (and is revoked) with it.
    const expiresAt =
      issued.expiresAt && issued.expiresAt.getTime() < leaseEnd
        ? issued.expiresAt.toISOString()
        : lease.expiresAt;
    const fields = {
      expiresAt,
      handle: issued.handle,
      references: issued.references ? { ...issued.references } : undefined,
    };
    const nowIso = new Date(this.deps.clock.now()).toISOString();
    const write = mode.local
      ? this.deps.states.issueActive(lease, fields, nowIso)
      : this.deps.states.activate(lease, fields, nowIso);
    this.deps.audit.add(write, {
      type: "lease_issued",
      actor: actorOf(agent),
      agentId: agent.id,
      taskId: lease.taskId,
      leaseId: lease.id,
      resource: lease.resource,
      decision: "allow",
      reason: `rule ${this.deps.policy.ruleName(decision.rule)}`,
      policyIds: decision.policyIds,
      scopes: lease.scopes,
      expiresAt,
    });
    const activated = await this.deps.audit.apply(write);
    if (mode.local) {
      if (activated.ok) {
        this.deps.metrics.leasesMinted.inc({ resource: lease.resource, adapter: adapter.kind });
        return { lease: { ...lease, ...fields, status: "active" }, credential: issued.credential };
      }
      // The task changed since it was read: the credential is dropped, never given out.
      this.#approved.delete(lease.taskId);
      const task = activated.record ? (JSON.parse(activated.record) as Task) : undefined;
      if (!task) return denied(new NotFoundError("task"));
      await this.checkLive(task, denied);
      throw new Error(`lease ${lease.id} could not be written`);
    }
    if (!activated.ok) {
      // Revoked, or its task ended, while the adapter worked. That revocation may have run
      // before the credential existed, so revoke what just arrived, here.
      await this.deps.revoker.revokeLateIssue(lease, adapter, issued);
      const task = await this.deps.tasks.get(lease.taskId);
      return denied(
        task?.status === "approved" && Date.parse(task.expiresAt) > this.deps.clock.now()
          ? new LeaseRevokedError(lease.id)
          : new TaskClosedError(lease.taskId, task?.status ?? "missing"),
      );
    }
    this.deps.metrics.leasesMinted.inc({ resource: lease.resource, adapter: adapter.kind });
    return { lease: JSON.parse(activated.record ?? "{}") as Lease, credential: issued.credential };
  }

  private async deny(
    agent: AgentPrincipal,
    taskId: string,
    request: MintRequest,
    error: JitkeyError,
  ): Promise<never> {
    this.deps.metrics.denials.inc({ decision: "lease", code: error.code });
    await this.deps.audit.record({
      type: "lease_denied",
      actor: actorOf(agent),
      agentId: agent.id,
      // An unknown task id is not indexed: nobody can make the trail keep keys for ids they invent.
      ...(error instanceof NotFoundError ? { requestedTaskId: taskId } : { taskId }),
      resource: request.resource,
      decision: "deny",
      reason: error instanceof PolicyDeniedError ? error.reason : error.message,
      ...(error instanceof PolicyDeniedError ? { policyIds: policyIdsOf(error) } : {}),
    });
    throw error;
  }
}
