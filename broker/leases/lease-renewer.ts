import { AdapterError, type CredentialAdapter } from "../../adapters/types.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import {
  AdapterUnavailableError,
  type JitkeyError,
  LeaseNotRenewableError,
  PolicyDeniedError,
  TaskClosedError,
} from "../errors.ts";
import { type AgentPrincipal, actorOf } from "../identity/principal.ts";
import type { Metrics } from "../metrics.ts";
import type { PolicyEngine } from "../policy/policy-engine.ts";
import type { RecordStore } from "../store/record-store.ts";
import type { Task } from "../tasks/task.ts";
import type { Lease } from "./lease.ts";
import type { LeaseStates } from "./lease-states.ts";

/**
 * Extends live leases whose backend can extend a credential (a Vault lease, a database
 * role's VALID UNTIL). Policy is evaluated again, as it is now; the new end never passes the
 * task's, and the lease's due time moves with it.
 */
export class LeaseRenewer {
  constructor(
    private readonly deps: {
      tasks: RecordStore<Task>;
      states: LeaseStates;
      policy: PolicyEngine;
      adapters: ReadonlyMap<string, CredentialAdapter>;
      audit: AuditLog;
      metrics: Metrics;
      clock: Clock;
    },
  ) {}

  /** Renews `lease` (already checked to be the agent's) for `ttlSeconds` from now, or the most policy allows. */
  async renew(agent: AgentPrincipal, lease: Lease, request: { ttlSeconds?: number }): Promise<Lease> {
    const { clock, policy } = this.deps;
    const denied = (error: JitkeyError) => this.deny(agent, lease, error);
    const now = clock.now();
    if (lease.status !== "active" || Date.parse(lease.expiresAt) <= now)
      return denied(new LeaseNotRenewableError(`lease ${lease.id} is not active`));
    const task = await this.deps.tasks.get(lease.taskId);
    if (task?.status !== "approved" || Date.parse(task.expiresAt) <= now)
      return denied(new TaskClosedError(lease.taskId, task?.status ?? "missing"));
    const adapter = this.deps.adapters.get(lease.resource);
    if (!adapter?.renew || !adapter.capabilities.renewable)
      return denied(
        new LeaseNotRenewableError(
          `credentials of ${lease.resource} cannot be extended; mint a new lease instead`,
        ),
      );
    let maxTtlSeconds: number;
    try {
      const decision = policy.evaluateLease(agent, task, {
        resource: lease.resource,
        scopes: lease.scopes,
      });
      maxTtlSeconds = Math.min(
        decision.maxTtlSeconds,
        adapter.capabilities.maxTtlSeconds ?? Number.POSITIVE_INFINITY,
      );
    } catch (error) {
      if (error instanceof PolicyDeniedError) return denied(error);
      throw error;
    }
    if (request.ttlSeconds !== undefined && request.ttlSeconds > maxTtlSeconds)
      return denied(
        new PolicyDeniedError(`ttlSeconds ${request.ttlSeconds} exceeds the maximum of ${maxTtlSeconds}`),
      );
    const target =
      Math.floor(
        Math.min(now + (request.ttlSeconds ?? maxTtlSeconds) * 1000, Date.parse(task.expiresAt)) / 1000,
      ) * 1000;
    // Nothing to extend: the lease already lasts that long.
    if (target <= Date.parse(lease.expiresAt)) return lease;

    let granted: Date;
    try {
      ({ expiresAt: granted } = await adapter.renew({
        leaseId: lease.id,
        resource: lease.resource,
        handle: lease.handle,
        references: lease.references,
        expiresAt: new Date(target),
      }));
    } catch (error) {
      const reason = error instanceof AdapterError ? error.message : "adapter failed";
      return denied(new AdapterUnavailableError(`${lease.resource}: ${reason}`));
    }
    const expiresAt = new Date(Math.min(granted.getTime(), target)).toISOString();
    const write = this.deps.states.extend(lease, expiresAt, new Date(now).toISOString());
    this.deps.audit.add(write, {
      type: "lease_renewed",
      actor: actorOf(agent),
      agentId: agent.id,
      taskId: lease.taskId,
      leaseId: lease.id,
      resource: lease.resource,
      decision: "allow",
      previousExpiresAt: lease.expiresAt,
      expiresAt,
    });
    const result = await this.deps.audit.apply(write);
    if (!result.ok)
      return denied(new LeaseNotRenewableError(`lease ${lease.id} changed while it was being renewed`));
    this.deps.metrics.leasesRenewed.inc({ resource: lease.resource });
    return JSON.parse(result.record ?? "{}") as Lease;
  }

  private async deny(agent: AgentPrincipal, lease: Lease, error: JitkeyError): Promise<never> {
    this.deps.metrics.denials.inc({ decision: "renew", code: error.code });
    await this.deps.audit.record({
      type: "lease_denied",
      actor: actorOf(agent),
      agentId: agent.id,
      taskId: lease.taskId,
      leaseId: lease.id,
      resource: lease.resource,
      decision: "deny",
      reason: `renew: ${error instanceof PolicyDeniedError ? error.reason : error.message}`,
    });
    throw error;
  }
}
