import { AdapterError, type CredentialAdapter, type IssuedCredential } from "../../adapters/types.ts";
import type { RevocationQueue } from "../../jobs/queues.ts";
import type { AuditInput, AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import type { Config } from "../config.ts";
import type { Logger } from "../logger.ts";
import type { Metrics } from "../metrics.ts";
import type { ShardKeys } from "../redis.ts";
import type { AtomicWrite, BatchPatch } from "../store/atomic-write.ts";
import type { RecordStore } from "../store/record-store.ts";
import { LIVE_TASK_STATUSES, type Task } from "../tasks/task.ts";
import type { Lease, RevokeReason } from "./lease.ts";
import type { LeaseStates } from "./lease-states.ts";

/** Who asked for a revocation, when, and why. */
export interface RevocationRequest {
  reason: RevokeReason;
  requestedAt: string;
  requestedBy: string;
}

/** What one settling pass did. */
export interface SettleReport {
  revoked: number;
  /** Attempts that failed and are scheduled again. */
  retrying: number;
  /** Rounds that gave up: now revoke_failed. */
  failed: number;
  /** Leases looked at before they were due, put back. */
  rescheduled: number;
  /** Revoked or vanished leases taken out of the indexes. */
  tidied: number;
  /** Leases another job is revoking right now, left to it. */
  busy: number;
}

/** The lease revocation reason that goes with a task's end. */
const CLOSING_REASONS: Partial<Record<Task["status"], RevokeReason>> = {
  completed: "task_completed",
  expired: "expired",
  revoked: "operator",
  denied: "operator",
};

export interface LeaseRevokerDeps {
  leases: RecordStore<Lease>;
  tasks: RecordStore<Task>;
  states: LeaseStates;
  adapters: ReadonlyMap<string, CredentialAdapter>;
  queue: RevocationQueue;
  audit: AuditLog;
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
  revocation: Pick<
    Config["revocation"],
    "attempts" | "backoffMs" | "staleSeconds" | "retryFailedAfterSeconds"
  >;
  /** The leases delegated from these leases (token exchange), from the children index. */
  childrenOf?: (leaseIds: readonly string[]) => Promise<string[]>;
}

/**
 * Revokes leases. Requests move leases to `revoking` and enqueue them; the revocation jobs
 * call {@link settle}, which revokes each through its adapter (or, where the adapter has
 * nothing to delete, just marks it revoked), retries failures with backoff through the due
 * indexes, and marks a round that gives up `revoke_failed` — retried later, never forgotten.
 */
export class LeaseRevoker {
  constructor(private readonly deps: LeaseRevokerDeps) {}

  /**
   * Moves leases to `revoking` now and enqueues their revocation. A lease already revoking
   * is left to the job that owns it; a `revoke_failed` lease gets a new round.
   * Every lease delegated from them goes too (`parent_revoked`), read after the parents moved:
   * a delegation needs an active parent, so none can slip in behind the walk.
   * Returns the leases this call moved (descendants not counted).
   */
  async request(leaseIds: readonly string[], request: RevocationRequest): Promise<Lease[]> {
    const { audit, states } = this.deps;
    const leases = (await this.deps.leases.getMany(leaseIds)).filter((lease) =>
      ["issuing", "active", "revoke_failed"].includes(lease.status),
    );
    const writes = leases.map((lease) => {
      const write = states.startRevocation(lease, request, this.lookAgainAt());
      audit.add(write, {
        type: "lease_revoke_requested",
        actor: request.requestedBy,
        agentId: lease.agentId,
        taskId: lease.taskId,
        leaseId: lease.id,
        resource: lease.resource,
        reason: lease.status === "revoke_failed" ? (lease.revokeReason ?? request.reason) : request.reason,
      });
      return write;
    });
    const results = await audit.applyAll(writes);
    const moved = results.flatMap((result) =>
      result.ok && result.record ? [JSON.parse(result.record) as Lease] : [],
    );
    await this.deps.queue.settleLeases(moved.map((lease) => lease.id));
    const children = (await this.deps.childrenOf?.(leaseIds)) ?? [];
    if (children.length > 0) await this.request(children, { ...request, reason: "parent_revoked" });
    return moved;
  }

  /**
   * The revocation job: brings each lease that is due to its next state. Idempotent.
   * `job` is the BullMQ job's id: a re-run of the same job takes over its own attempts at once.
   */
  async settle(leaseIds: readonly string[], job?: string): Promise<SettleReport> {
    const report: SettleReport = { revoked: 0, retrying: 0, failed: 0, rescheduled: 0, tidied: 0, busy: 0 };
    const { states, audit } = this.deps;
    const now = this.deps.clock.now();
    const nowIso = new Date(now).toISOString();
    const leases = await this.deps.leases.getMany(leaseIds);
    const found = new Set(leases.map((lease) => lease.id));
    const taskIds = [...new Set(leases.map((lease) => lease.taskId))];
    const tasks = new Map((await this.deps.tasks.getMany(taskIds)).map((task) => [task.id, task]));

    // Each planned write, and what to do once it is applied.
    const planned: { write: AtomicWrite; applied?: (written: () => Lease) => void }[] = [];
    const patches: { patch: BatchPatch; applied: () => void }[] = [];
    const tidy = (write: AtomicWrite) => planned.push({ write, applied: () => (report.tidied += 1) });
    for (const id of leaseIds) if (!found.has(id)) tidy(states.untrack(id));
    // Leases already under revocation, whose next attempt this job must take first.
    const revoking: Lease[] = [];
    // Leases this job goes on to the adapter with.
    const attempts: Lease[] = [];
    for (const lease of leases) {
      if (lease.status === "revoked") {
        tidy(
          states.untrack(
            lease.id,
            lease.handle ? { resource: lease.resource, handle: lease.handle } : undefined,
          ),
        );
        continue;
      }
      const request =
        lease.status === "issuing" || lease.status === "active"
          ? this.dueRevocation(lease, tasks.get(lease.taskId), now)
          : this.ongoingRevocation(lease);
      if (!request) {
        planned.push({
          write: states.reschedule(lease, this.lookAt(lease)),
          applied: () => (report.rescheduled += 1),
        });
      } else if (lease.revocation !== "backend") {
        // The adapter has nothing to delete: the status change is the revocation. Nearly
        // every such lease fits the one-shape patch many of which go in one call.
        const applied = () => {
          this.countRevoked(lease, request, now);
          report.revoked += 1;
        };
        const patch = states.settleDirectPatch(lease, request, nowIso);
        if (patch)
          patches.push({
            patch: { ...patch, event: this.revokedEvent(patch.shard, lease, request, now) },
            applied,
          });
        else planned.push({ write: this.settleWrite(lease, request, nowIso, true), applied });
      } else if (lease.status === "revoking") {
        revoking.push(lease);
      } else {
        // The move to revoking takes the first attempt too: only the job whose write wins goes on.
        const write = states.startRevocation(lease, request, this.lookAgainAt(), { at: nowIso, by: job });
        if (request.reason !== "expired")
          audit.add(write, this.event("lease_revoke_requested", lease, request.requestedBy, request.reason));
        planned.push({ write, applied: (started) => attempts.push(started()) });
      }
    }
    const [results, patched] = await Promise.all([
      audit.applyAll(planned.map(({ write }) => write)),
      audit.applyPatches(patches.map(({ patch }) => patch)),
    ]);
    patched.forEach((ok, i) => {
      if (ok) patches[i]?.applied();
    });
    results.forEach((result, i) => {
      // Only a started attempt needs the record as written; the rest need no parse of it.
      if (result.ok) planned[i]?.applied?.(() => JSON.parse(result.record ?? "{}") as Lease);
    });
    const taken = await this.takeAttempts(revoking, now, job);
    attempts.push(...taken);
    report.busy += revoking.length - taken.length;
    await forEachLimited(attempts, 16, async (lease) => {
      report[await this.attempt(lease)] += 1;
    });
    return report;
  }

  /**
   * Takes the next attempt of each lease for this job. A lease whose attempt another job took
   * less than `staleSeconds` ago is left to that job, so one lease is at the adapter once at a
   * time; an older attempt is presumed dead with its worker, and taken over, as is one this
   * same job took before its worker died.
   */
  private async takeAttempts(leases: readonly Lease[], now: number, job?: string): Promise<Lease[]> {
    const free = leases.filter(
      (lease) =>
        !lease.revokeAttemptAt ||
        Date.parse(lease.revokeAttemptAt) + this.staleMs <= now ||
        (job !== undefined && lease.revokeAttemptBy === job),
    );
    const attempt = { at: new Date(now).toISOString(), by: job };
    const results = await this.deps.audit.applyAll(
      free.map((lease) => this.deps.states.takeAttempt(lease, attempt, now + this.staleMs)),
    );
    return results.flatMap((result) =>
      result.ok && result.record ? [JSON.parse(result.record) as Lease] : [],
    );
  }

  /**
   * Revokes a credential the adapter returned after its lease had left `issuing`. If that
   * fails, the lease (with the handle) is marked `revoke_failed` so it is retried until gone.
   */
  async revokeLateIssue(lease: Lease, adapter: CredentialAdapter, issued: IssuedCredential): Promise<void> {
    const { handle, references } = issued;
    try {
      await adapter.revoke({ leaseId: lease.id, resource: lease.resource, handle, references });
    } catch (error) {
      const now = this.deps.clock.now();
      const failure = { at: new Date(now).toISOString(), error: errorText(error) };
      // A job of an earlier round may move the lease between our read and write: try a few times.
      for (let attempt = 0; attempt < 5; attempt++) {
        const current = await this.deps.leases.get(lease.id);
        if (!current) return;
        const write = this.deps.states.reopenFailed(
          current,
          { handle, references },
          failure,
          now + this.deps.revocation.retryFailedAfterSeconds * 1000,
        );
        this.deps.audit.add(write, {
          ...this.event("lease_revoke_failed", current, "system"),
          reason: failure.error,
        });
        if ((await this.deps.audit.apply(write)).ok) {
          this.recordFailure(current, failure.error);
          return;
        }
      }
      throw error;
    }
  }

  /** One attempt of the current round through the adapter. */
  private async attempt(lease: Lease): Promise<"revoked" | "retrying" | "failed"> {
    const { states, audit, clock } = this.deps;
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
      const now = clock.now();
      const attempts = (lease.revokeAttempts ?? 0) + 1;
      const permanent = error instanceof AdapterError && error.permanent;
      if (!permanent && attempts < this.deps.revocation.attempts) {
        const retryAt = now + this.deps.revocation.backoffMs * 2 ** (attempts - 1);
        await audit.apply(states.retryLater(lease, attempts, retryAt));
        this.deps.logger.warn("lease revoke attempt failed; retrying", {
          leaseId: lease.id,
          resource: lease.resource,
          attempts,
          error: errorText(error),
        });
        return "retrying";
      }
      const failure = { at: new Date(now).toISOString(), error: errorText(error) };
      const write = states.markFailed(
        lease,
        failure,
        now + this.deps.revocation.retryFailedAfterSeconds * 1000,
      );
      audit.add(write, { ...this.event("lease_revoke_failed", lease, "system"), reason: failure.error });
      if ((await audit.apply(write)).ok) this.recordFailure(lease, failure.error);
      return "failed";
    }
    const request = this.ongoingRevocation(lease);
    const result = await audit.apply(
      this.settleWrite(lease, request, new Date(clock.now()).toISOString(), false),
    );
    if (result.ok) this.countRevoked(lease, request, clock.now());
    return "revoked";
  }

  /** Why a live lease must be revoked now, or `undefined` when it is not due yet. */
  private dueRevocation(lease: Lease, task: Task | undefined, now: number): RevocationRequest | undefined {
    const system = (reason: RevokeReason, requestedAt: string) => ({
      reason,
      requestedAt,
      requestedBy: "system",
    });
    if (!task) return system("expired", new Date(now).toISOString());
    if (!LIVE_TASK_STATUSES.includes(task.status)) {
      return {
        reason: CLOSING_REASONS[task.status] ?? "operator",
        requestedAt: task.closedAt ?? new Date(now).toISOString(),
        requestedBy: task.closedBy ?? "system",
      };
    }
    if (Date.parse(lease.expiresAt) <= now) return system("expired", lease.expiresAt);
    if (Date.parse(task.expiresAt) <= now) return system("expired", task.expiresAt);
    if (lease.status === "issuing" && Date.parse(lease.issuedAt) + this.staleMs <= now)
      return system("issue_failed", new Date(now).toISOString());
    return undefined;
  }

  /** The revocation a revoking or revoke_failed lease is already in. */
  private ongoingRevocation(lease: Lease): RevocationRequest {
    return {
      reason: lease.revokeReason ?? "expired",
      requestedAt: lease.revokeRequestedAt ?? lease.expiresAt,
      requestedBy: lease.revokeRequestedBy ?? "system",
    };
  }

  private settleWrite(
    lease: Lease,
    request: RevocationRequest,
    revokedAt: string,
    direct: boolean,
  ): AtomicWrite {
    // Nobody reads the revoked record back: the script need not send it.
    const write = (
      direct
        ? this.deps.states.settleDirect(lease, request, revokedAt)
        : this.deps.states.settle(lease, revokedAt)
    ).quiet();
    this.deps.audit.add(write, this.revokedInput(lease, request, Date.parse(revokedAt)));
    return write;
  }

  private revokedEvent(shard: ShardKeys, lease: Lease, request: RevocationRequest, revokedAt: number) {
    return this.deps.audit.prepare(shard, this.revokedInput(lease, request, revokedAt));
  }

  private revokedInput(lease: Lease, request: RevocationRequest, revokedAt: number): AuditInput {
    return {
      ...this.event("lease_revoked", lease, request.requestedBy, request.reason),
      lagSeconds: lagSeconds(request, revokedAt),
    };
  }

  private countRevoked(lease: Lease, request: RevocationRequest, revokedAt: number): void {
    this.deps.metrics.revocations.inc({ reason: request.reason, resource: lease.resource });
    this.deps.metrics.revokeLag.observe({ reason: request.reason }, lagSeconds(request, revokedAt));
  }

  private recordFailure(lease: Lease, error: string): void {
    this.deps.metrics.revokeFailures.inc({ resource: lease.resource });
    this.deps.logger.error("lease revoke failed", { leaseId: lease.id, resource: lease.resource, error });
  }

  private event(
    type: "lease_revoked" | "lease_revoke_requested" | "lease_revoke_failed",
    lease: Lease,
    actor: string,
    reason?: string,
  ) {
    return {
      type,
      actor,
      agentId: lease.agentId,
      taskId: lease.taskId,
      leaseId: lease.id,
      resource: lease.resource,
      reason,
    };
  }

  private get staleMs(): number {
    return this.deps.revocation.staleSeconds * 1000;
  }

  private lookAgainAt(): number {
    return this.deps.clock.now() + this.staleMs;
  }

  /** When a live lease must next be looked at: its expiry, or when its mint goes stale. */
  private lookAt(lease: Lease): number {
    const expiry = Date.parse(lease.expiresAt);
    return lease.status === "issuing" ? Math.min(expiry, Date.parse(lease.issuedAt) + this.staleMs) : expiry;
  }
}

/** Seconds from when a revocation was due (expiry or request) to when it was confirmed. */
function lagSeconds(request: RevocationRequest, revokedAt: number): number {
  return Math.max(0, (revokedAt - Date.parse(request.requestedAt)) / 1000);
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : "revoke failed";
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function forEachLimited<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++] as T);
  });
  await Promise.all(runners);
}
