import type { Cluster, Redis } from "ioredis";
import type { RevocationQueue } from "../../jobs/queues.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import type { Classification, Config } from "../config.ts";
import {
  ForbiddenError,
  type JitkeyError,
  NotFoundError,
  PolicyDeniedError,
  TaskClosedError,
} from "../errors.ts";
import type { LiveEvents } from "../events/live-events.ts";
import {
  type AgentPrincipal,
  actorOf,
  type OperatorPrincipal,
  type Principal,
} from "../identity/principal.ts";
import { DEFAULT_TENANT, newId } from "../ids.ts";
import type { Metrics } from "../metrics.ts";
import type { PolicyEngine } from "../policy/policy-engine.ts";
import { policyIdsOf } from "../policy/policy-errors.ts";
import { QuotaExceededError, type Quotas, type Reservation } from "../quotas/quotas.ts";
import type { RedisKeys, ShardKeys } from "../redis.ts";
import { AtomicWrite } from "../store/atomic-write.ts";
import type { RecordStore } from "../store/record-store.ts";
import {
  type ApprovalRequest,
  approvalsRequiredFor,
  DuplicateApprovalError,
  narrowGrant,
} from "./approvals.ts";
import { LIVE_TASK_STATUSES, type Task, type TaskApproval, type TaskStatus } from "./task.ts";

export interface TaskServiceDeps {
  redis: Redis | Cluster;
  /** Live events, to answer a waiting read the moment its task is decided. */
  events: Pick<LiveEvents, "subscribe" | "ready">;
  keys: RedisKeys;
  tasks: RecordStore<Task>;
  policy: PolicyEngine;
  queue: RevocationQueue;
  audit: AuditLog;
  metrics: Metrics;
  clock: Clock;
  /** Pending-task quotas; none when absent. */
  quotas?: Pick<Quotas, "reservePendingTask">;
  config: Pick<Config, "tasks" | "retention" | "resources"> & {
    revocation: Pick<Config["revocation"], "staleSeconds">;
  };
}

export interface NewTask {
  goal: string;
  resources: { resource: string; scopes: string[] }[];
  dataClassification?: Classification;
  ttlSeconds?: number;
}

/** How a task ended: its audit event type. */
const CLOSINGS = {
  completed: "task_completed",
  expired: "task_expired",
  revoked: "task_revoked",
} as const;
export type TaskClosing = keyof typeof CLOSINGS;

/** Tasks: declared goals that an operator or a policy rule approves, and that end. */
export class TaskService {
  constructor(private readonly deps: TaskServiceDeps) {}

  /**
   * Creates a task; `approved` at once when every rule involved allows auto-approval and it
   * needs no more than one approval (restricted data always waits for two operators).
   */
  async create(
    agent: AgentPrincipal,
    request: NewTask,
    context: { sourceAddress?: string } = {},
  ): Promise<Task> {
    const { clock, policy, audit, config, keys } = this.deps;
    const ttlSeconds = request.ttlSeconds ?? config.tasks.defaultTtlSeconds;
    let decision: ReturnType<PolicyEngine["evaluateTask"]>;
    try {
      if (ttlSeconds > config.tasks.maxTtlSeconds) {
        throw new PolicyDeniedError(
          `task ttlSeconds ${ttlSeconds} exceeds the maximum of ${config.tasks.maxTtlSeconds}`,
        );
      }
      decision = policy.evaluateTask(agent, { ...request, ttlSeconds }, context);
    } catch (error) {
      if (error instanceof PolicyDeniedError) await this.rejected(agent, request, error);
      throw error;
    }
    const now = clock.now();
    const at = new Date(now).toISOString();
    const approvalsRequired = approvalsRequiredFor(decision, config.resources);
    const autoApprove = decision.autoApprove && approvalsRequired === 1;
    const task: Task = {
      id: newId("tsk"),
      tenant: DEFAULT_TENANT,
      agentId: agent.id,
      ...(agent.owner ? { agentOwner: agent.owner } : {}),
      goal: request.goal,
      resources: decision.resources.map(({ resource, scopes, owner }) =>
        owner ? { resource, scopes, owner } : { resource, scopes },
      ),
      dataClassification: decision.dataClassification,
      status: autoApprove ? "approved" : "pending",
      createdAt: at,
      expiresAt: new Date(now + ttlSeconds * 1000).toISOString(),
      approvalsRequired,
      ...(autoApprove ? { approvedAt: at, approvedBy: decision.approvedBy } : {}),
    };
    // What the agent presented, so later decisions (introspection, a reload) judge the task on it.
    const agentClaims = policy.claimsToRecord(agent, decision);
    if (Object.keys(agentClaims).length > 0) task.agentClaims = agentClaims;
    const reservation = await this.reservePending(agent, request, task);
    const shard = keys.forId(task.id);
    const retentionMs = this.retentionSeconds * 1000;
    const write = new AtomicWrite(shard)
      .create(shard.task(task.id), task)
      .zadd(shard.allTasks, now, task.id)
      .zadd(
        shard.liveTasks,
        autoApprove ? this.unusedApprovalDue(task, now) : Date.parse(task.expiresAt),
        task.id,
      )
      .zadd(shard.agentTasks(agent.id), now, task.id)
      .trimBelow(shard.agentTasks(agent.id), now - retentionMs)
      .expire(shard.agentTasks(agent.id), this.retentionSeconds + ttlSeconds);
    if (task.status === "pending") write.zadd(shard.pendingTasks, now, task.id);
    audit.add(write, {
      type: "task_created",
      actor: actorOf(agent),
      agentId: agent.id,
      taskId: task.id,
      decision: "allow",
      goal: task.goal,
      resources: task.resources,
      dataClassification: task.dataClassification,
      status: task.status,
      agentOwner: agent.owner,
      issuer: agent.issuer,
      approvalsRequired,
      policyIds: decision.policyIds,
      ...(decision.autoApprove && !autoApprove
        ? { autoApproveWithheld: `restricted data needs ${approvalsRequired} operators' approval` }
        : {}),
    });
    if (autoApprove) {
      audit.add(write, {
        type: "task_approved",
        actor: decision.approvedBy ?? "policy",
        agentId: agent.id,
        taskId: task.id,
        decision: "allow",
        reason: "auto-approved by policy",
      });
    }
    if (!(await audit.apply(write)).ok) {
      await reservation.release();
      throw new Error(`task ${task.id} could not be written`);
    }
    return task;
  }

  /** A pending task takes a slot in its agent's pending-task quota first. */
  private async reservePending(agent: AgentPrincipal, request: NewTask, task: Task): Promise<Reservation> {
    const quotas = this.deps.quotas;
    if (task.status !== "pending" || !quotas) return { release: async () => {} };
    try {
      return await quotas.reservePendingTask(task);
    } catch (error) {
      if (error instanceof QuotaExceededError) await this.rejected(agent, request, error);
      throw error;
    }
  }

  /** A task refused before it existed: counted and audited as `task_rejected`. */
  private async rejected(
    agent: AgentPrincipal,
    request: NewTask,
    error: PolicyDeniedError | QuotaExceededError,
  ): Promise<void> {
    this.deps.metrics.denials.inc({ decision: "task", code: (error as JitkeyError).code });
    await this.deps.audit.record({
      type: "task_rejected",
      actor: actorOf(agent),
      agentId: agent.id,
      decision: "deny",
      reason: error instanceof PolicyDeniedError ? error.reason : error.message,
      ...(error instanceof QuotaExceededError ? { quota: error.quota } : { policyIds: policyIdsOf(error) }),
      goal: request.goal,
      resources: request.resources,
    });
  }

  /** A task, if the principal is its owner or an operator. */
  async get(taskId: string, principal: Principal): Promise<Task> {
    const task = await this.deps.tasks.get(taskId);
    if (!task) throw new NotFoundError("task");
    if (principal.kind === "operator" || (principal.kind === "agent" && principal.id === task.agentId))
      return task;
    await this.deps.audit.record({
      type: "access_denied",
      actor: actorOf(principal),
      // Filed under the agent that tried, so its audit trail shows the attempt.
      agentId: principal.kind === "agent" ? principal.id : undefined,
      ownerAgentId: task.agentId,
      taskId,
      decision: "deny",
      reason: `${actorOf(principal)} does not own this task`,
    });
    throw new ForbiddenError("only the owning agent or an operator may see this task");
  }

  /**
   * A task, once it is no longer `pending` or after `waitSeconds` (long-poll). Answered the
   * moment any broker process decides, expires or ends it: the live event wakes the wait,
   * and the task is read again then (and at the deadline, should an event be lost).
   */
  async awaitDecision(
    taskId: string,
    principal: Principal,
    waitSeconds: number,
    signal?: AbortSignal,
  ): Promise<Task> {
    const task = await this.get(taskId, principal);
    if (task.status !== "pending" || waitSeconds <= 0) return task;
    const read = async () => (await this.deps.tasks.get(taskId)) ?? task;
    return new Promise<Task>((resolve, reject) => {
      let settled = false;
      const finish = () => {
        if (settled) return;
        settled = true;
        unsubscribe();
        clearTimeout(timer);
        signal?.removeEventListener("abort", finish);
        read().then(resolve, reject);
      };
      const unsubscribe = this.deps.events.subscribe(({ name, event }) => {
        if (event.taskId === taskId && name !== "task_pending") finish();
      });
      const timer = setTimeout(finish, waitSeconds * 1000);
      signal?.addEventListener("abort", finish);
      // Decided between the first read and the subscription: do not wait for an event already gone.
      this.deps.events
        .ready()
        .then(read)
        .then((now) => now.status !== "pending" && finish(), reject);
    });
  }

  /** Tasks newest first; `pending` and an agent's come from their own indexes. */
  async list(filter: { status?: TaskStatus; agentId?: string; limit: number }): Promise<Task[]> {
    const { redis, keys } = this.deps;
    const window = filter.status && filter.status !== "pending" ? filter.limit * 10 : filter.limit;
    const indexOf = (shard: ShardKeys) =>
      filter.agentId
        ? shard.agentTasks(filter.agentId)
        : filter.status === "pending"
          ? shard.pendingTasks
          : shard.allTasks;
    const ids = (
      await Promise.all(keys.shards.map((shard) => redis.zrevrange(indexOf(shard), 0, window - 1)))
    ).flat();
    const tasks = await this.deps.tasks.getMany(ids);
    return tasks
      .filter(
        (task) =>
          (!filter.status || task.status === filter.status) &&
          (!filter.agentId || task.agentId === filter.agentId),
      )
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt))
      .slice(0, filter.limit);
  }

  /**
   * Records an operator's approval of a pending, unexpired task, narrowed as asked. The task
   * becomes `approved` with its last required approval, each from a distinct operator;
   * until then it stays `pending`. Each approval is written guarded on the number of
   * approvals read, so two operators approving at once cannot both count as the same one:
   * the loser reads the task again and is judged against what the winner left.
   */
  async approve(taskId: string, operator: OperatorPrincipal, request: ApprovalRequest = {}): Promise<Task> {
    for (let attempt = 1; ; attempt++) {
      const task = await this.get(taskId, operator);
      const approved = await this.recordApproval(task, operator, request);
      if (approved) return approved;
      // Only another approval landing in between gets here; a handful of tries is plenty.
      if (attempt >= 5) throw new Error(`task ${taskId}: approval kept racing with others`);
    }
  }

  /** One try at {@link approve}; undefined when another approval landed first. */
  private async recordApproval(
    task: Task,
    operator: OperatorPrincipal,
    request: ApprovalRequest,
  ): Promise<Task | undefined> {
    if (task.status !== "pending") throw new TaskClosedError(task.id, task.status);
    await this.refuseSecondApprovalBy(task, operator);
    const now = this.deps.clock.now();
    const result = await this.deps.audit.apply(this.approvalWrite(task, operator, request, now));
    if (result.ok) return JSON.parse(result.record ?? "{}") as Task;
    const current = result.record ? (JSON.parse(result.record) as Task) : undefined;
    if (current?.status === "pending" && Date.parse(current.expiresAt) <= now) {
      await this.close(task.id, "expired", "system");
      throw new TaskClosedError(task.id, "expired");
    }
    if (current?.status === "pending") return undefined;
    throw new TaskClosedError(task.id, current?.status ?? "missing");
  }

  /** Separation of duty: an operator's approval counts once; the refusal is on record. */
  private async refuseSecondApprovalBy(task: Task, operator: OperatorPrincipal): Promise<void> {
    if (!(task.approvals ?? []).some((approval) => approval.by === operator.id)) return;
    const required = task.approvalsRequired ?? 1;
    await this.deps.audit.record({
      type: "task_approval_refused",
      actor: actorOf(operator),
      agentId: task.agentId,
      taskId: task.id,
      decision: "deny",
      reason: `${operator.id} already approved; the task needs ${required} distinct operators`,
    });
    throw new DuplicateApprovalError(task.id, required);
  }

  /**
   * The approval as one write, guarded on the task being pending, unexpired and holding the
   * approvals read: the grant narrowed, the approval appended, and — with the last one
   * required — the task approved and due again when its approval would lapse unused.
   */
  private approvalWrite(
    task: Task,
    operator: OperatorPrincipal,
    request: ApprovalRequest,
    now: number,
  ): AtomicWrite {
    const at = new Date(now).toISOString();
    const grant = narrowGrant(task, request, now);
    const approvals = task.approvals ?? [];
    const approval: TaskApproval = {
      by: operator.id,
      at,
      ...(request.note ? { note: request.note } : {}),
      ...(grant.narrowed ? { narrowedTo: { resources: grant.resources, expiresAt: grant.expiresAt } } : {}),
    };
    const requested = task.requested ?? { resources: task.resources, expiresAt: task.expiresAt };
    const required = task.approvalsRequired ?? 1;
    const count = approvals.length + 1;
    const final = count >= required;
    const shard = this.deps.keys.forId(task.id);
    const write = new AtomicWrite(shard)
      .guard(shard.task(task.id), ["pending"], {
        equals: { approvalCount: task.approvalCount ?? null },
        laterThan: { expiresAt: at },
      })
      .patch({
        resources: grant.resources,
        expiresAt: grant.expiresAt,
        approvals: [...approvals, approval],
        approvalCount: count,
        requested: grant.narrowed || task.requested ? requested : undefined,
        note: request.note,
        ...(final ? { status: "approved", approvedAt: at, approvedBy: operator.id } : {}),
      });
    if (final) {
      write
        .zrem(shard.pendingTasks, task.id)
        .zadd(shard.liveTasks, this.unusedApprovalDue({ expiresAt: grant.expiresAt }, now), task.id);
    } else if (grant.expiresAt !== task.expiresAt) {
      write.zadd(shard.liveTasks, Date.parse(grant.expiresAt), task.id);
    }
    this.deps.audit.add(write, {
      type: final ? "task_approved" : "task_approval_recorded",
      actor: actorOf(operator),
      agentId: task.agentId,
      taskId: task.id,
      decision: "allow",
      reason: request.note,
      approvals: count,
      approvalsRequired: required,
      narrowed: grant.narrowed,
      requested,
      approved: { resources: grant.resources, expiresAt: grant.expiresAt },
    });
    return write;
  }

  /** Denies a pending, unexpired task; one operator's denial ends it, whatever approvals it has. */
  async deny(taskId: string, operator: OperatorPrincipal, note?: string): Promise<Task> {
    const task = await this.get(taskId, operator);
    const now = this.deps.clock.now();
    const at = new Date(now).toISOString();
    const shard = this.deps.keys.forId(taskId);
    const write = new AtomicWrite(shard)
      .guard(shard.task(taskId), ["pending"], { laterThan: { expiresAt: at } })
      .patch(
        { status: "denied", deniedAt: at, deniedBy: operator.id, closedAt: at, note },
        { expiry: { seconds: this.retentionSeconds } },
      )
      .zrem(shard.pendingTasks, taskId)
      .zrem(shard.liveTasks, taskId);
    this.deps.audit.add(write, {
      type: "task_denied",
      actor: actorOf(operator),
      agentId: task.agentId,
      taskId,
      decision: "deny",
      reason: note,
    });
    const result = await this.deps.audit.apply(write);
    if (result.ok) return JSON.parse(result.record ?? "{}") as Task;
    const current = result.record ? (JSON.parse(result.record) as Task) : undefined;
    if (current?.status === "pending") {
      await this.close(taskId, "expired", "system");
      throw new TaskClosedError(taskId, "expired");
    }
    throw new TaskClosedError(taskId, current?.status ?? "missing");
  }

  /** Completes a task (owner or operator); every lease it holds is revoked. */
  async complete(taskId: string, principal: Principal): Promise<{ task: Task; revoking: number }> {
    const task = await this.get(taskId, principal);
    if (!LIVE_TASK_STATUSES.includes(task.status)) throw new TaskClosedError(taskId, task.status);
    const closed = await this.close(taskId, "completed", actorOf(principal));
    if (!closed) {
      const now = await this.deps.tasks.get(taskId);
      throw new TaskClosedError(taskId, now?.status ?? "missing");
    }
    return closed;
  }

  /**
   * Ends a live task as completed, expired or revoked. In the same write its live leases move
   * to the revoking index — introspection answers `active: false` for all of them at once,
   * since it checks the task — and then jobs revoke them. Returns undefined when the task was
   * not live (someone else ended it first).
   */
  async close(
    taskId: string,
    status: TaskClosing,
    actor: string,
    /** Why, when the status does not say it all (`approval_unused`); kept as `closedReason`. */
    reason?: string,
  ): Promise<{ task: Task; revoking: number } | undefined> {
    const now = this.deps.clock.now();
    const at = new Date(now).toISOString();
    const shard = this.deps.keys.forId(taskId);
    const write = new AtomicWrite(shard)
      .guard(shard.task(taskId), LIVE_TASK_STATUSES)
      .patch(
        { status, closedAt: at, closedBy: actor, closedReason: reason },
        { expiry: { seconds: this.retentionSeconds } },
      )
      .zrem(shard.pendingTasks, taskId)
      .zrem(shard.liveTasks, taskId)
      .expire(shard.taskLeases(taskId), this.retentionSeconds)
      .moveMembers(
        shard.taskLeases(taskId),
        [shard.liveLeases, shard.failedLeases],
        shard.revokingLeases,
        now + this.deps.config.revocation.staleSeconds * 1000,
      );
    const task = await this.deps.tasks.get(taskId);
    this.deps.audit.add(
      write,
      { type: CLOSINGS[status], actor, agentId: task?.agentId, taskId, reason: reason ?? status },
      { movedCountField: "revoking" },
    );
    const result = await this.deps.audit.apply(write);
    if (!result.ok) return undefined;
    await this.deps.queue.settleLeases(result.moved);
    return { task: JSON.parse(result.record ?? "{}") as Task, revoking: result.moved.length };
  }

  /**
   * Sends a closed task's leases that are still live or failed back through revocation (an
   * operator's force revocation of an agent whose earlier task left a revoke_failed lease).
   */
  async revokeRemainingLeases(taskId: string): Promise<number> {
    const shard = this.deps.keys.forId(taskId);
    const now = this.deps.clock.now();
    const write = new AtomicWrite(shard).moveMembers(
      shard.taskLeases(taskId),
      [shard.liveLeases, shard.failedLeases],
      shard.revokingLeases,
      now + this.deps.config.revocation.staleSeconds * 1000,
    );
    const result = await this.deps.audit.apply(write);
    await this.deps.queue.settleLeases(result.moved);
    return result.moved.length;
  }

  /**
   * Ends a task whose time is up — its lifetime, or, for an approved task that has minted
   * nothing, `tasks.approvalUnusedSeconds` after its approval — and otherwise puts it back in
   * the due index at the next time to look. Called by the task expiry job; one task, a few
   * reads.
   */
  async expireIfDue(taskId: string): Promise<boolean> {
    const shard = this.deps.keys.forId(taskId);
    const task = await this.deps.tasks.get(taskId);
    if (!task || !LIVE_TASK_STATUSES.includes(task.status)) {
      await this.deps.redis.zrem(shard.liveTasks, taskId);
      return false;
    }
    const now = this.deps.clock.now();
    if (Date.parse(task.expiresAt) <= now)
      return (await this.close(taskId, "expired", "system")) !== undefined;
    let due = Date.parse(task.expiresAt);
    if (task.status === "approved" && (await this.deps.redis.zcard(shard.taskLeases(taskId))) === 0) {
      due = this.unusedApprovalDue(task, Date.parse(task.approvedAt ?? task.createdAt));
      // A mint landing between the count and the close is revoked by the close: safe, if unlucky.
      if (due <= now) {
        const closed = await this.close(taskId, "expired", "system", "approval_unused");
        if (closed) this.deps.metrics.tasksExpiredUnused.inc();
        return closed !== undefined;
      }
    }
    await this.deps.redis.zadd(shard.liveTasks, due, taskId);
    return false;
  }

  /** When an approved task that has minted nothing must be looked at: the approval lapses then, or the task ends. */
  private unusedApprovalDue(task: Pick<Task, "expiresAt">, approvedAtMs: number): number {
    return Math.min(
      Date.parse(task.expiresAt),
      approvedAtMs + this.deps.config.tasks.approvalUnusedSeconds * 1000,
    );
  }

  /** Tasks of an agent (live or not, within retention), or every live task. */
  async taskIds(selector: { agentId?: string; all?: boolean }): Promise<string[]> {
    const { redis, keys } = this.deps;
    if (!selector.agentId && !selector.all) return [];
    const lists = await Promise.all(
      keys.shards.map((shard) =>
        redis.zrange(selector.agentId ? shard.agentTasks(selector.agentId) : shard.liveTasks, 0, -1),
      ),
    );
    return lists.flat();
  }

  private get retentionSeconds(): number {
    return this.deps.config.retention.leaseRecordDays * 86_400;
  }
}
