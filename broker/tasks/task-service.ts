import type { Cluster, Redis } from "ioredis";
import type { RevocationQueue } from "../../jobs/queues.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import type { Classification, Config } from "../config.ts";
import { ForbiddenError, NotFoundError, PolicyDeniedError, TaskClosedError } from "../errors.ts";
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
import type { RedisKeys, ShardKeys } from "../redis.ts";
import { AtomicWrite } from "../store/atomic-write.ts";
import type { RecordStore } from "../store/record-store.ts";
import { LIVE_TASK_STATUSES, type Task, type TaskStatus } from "./task.ts";

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
  config: Pick<Config, "tasks" | "retention"> & { revocation: Pick<Config["revocation"], "staleSeconds"> };
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

  /** Creates a task; `approved` at once when every rule involved allows auto-approval. */
  async create(agent: AgentPrincipal, request: NewTask): Promise<Task> {
    const { clock, policy, audit, config, keys } = this.deps;
    const ttlSeconds = request.ttlSeconds ?? config.tasks.defaultTtlSeconds;
    let decision: ReturnType<PolicyEngine["evaluateTask"]>;
    try {
      if (ttlSeconds > config.tasks.maxTtlSeconds) {
        throw new PolicyDeniedError(
          `task ttlSeconds ${ttlSeconds} exceeds the maximum of ${config.tasks.maxTtlSeconds}`,
        );
      }
      decision = policy.evaluateTask(agent.id, request);
    } catch (error) {
      if (error instanceof PolicyDeniedError) {
        this.deps.metrics.denials.inc({ decision: "task", code: error.code });
        await audit.record({
          type: "task_rejected",
          actor: actorOf(agent),
          agentId: agent.id,
          decision: "deny",
          reason: error.reason,
          goal: request.goal,
          resources: request.resources,
        });
      }
      throw error;
    }
    const now = clock.now();
    const at = new Date(now).toISOString();
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
      status: decision.autoApprove ? "approved" : "pending",
      createdAt: at,
      expiresAt: new Date(now + ttlSeconds * 1000).toISOString(),
      ...(decision.autoApprove ? { approvedAt: at, approvedBy: decision.approvedBy } : {}),
    };
    const shard = keys.forId(task.id);
    const retentionMs = this.retentionSeconds * 1000;
    const write = new AtomicWrite(shard)
      .create(shard.task(task.id), task)
      .zadd(shard.allTasks, now, task.id)
      .zadd(shard.liveTasks, Date.parse(task.expiresAt), task.id)
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
    });
    if (decision.autoApprove) {
      audit.add(write, {
        type: "task_approved",
        actor: decision.approvedBy ?? "policy",
        agentId: agent.id,
        taskId: task.id,
        decision: "allow",
        reason: "auto-approved by policy",
      });
    }
    if (!(await audit.apply(write)).ok) throw new Error(`task ${task.id} could not be written`);
    return task;
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

  /** Approves or denies a pending, unexpired task. */
  async decide(taskId: string, operator: OperatorPrincipal, approve: boolean, note?: string): Promise<Task> {
    const task = await this.get(taskId, operator);
    const now = this.deps.clock.now();
    const at = new Date(now).toISOString();
    const shard = this.deps.keys.forId(taskId);
    const write = new AtomicWrite(shard)
      .guard(shard.task(taskId), ["pending"], { laterThan: { expiresAt: at } })
      .patch(
        approve
          ? { status: "approved", approvedAt: at, approvedBy: operator.id, note }
          : { status: "denied", deniedAt: at, deniedBy: operator.id, closedAt: at, note },
        approve ? {} : { expiry: { seconds: this.retentionSeconds } },
      )
      .zrem(shard.pendingTasks, taskId);
    if (!approve) write.zrem(shard.liveTasks, taskId);
    this.deps.audit.add(write, {
      type: approve ? "task_approved" : "task_denied",
      actor: actorOf(operator),
      agentId: task.agentId,
      taskId,
      decision: approve ? "allow" : "deny",
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
  ): Promise<{ task: Task; revoking: number } | undefined> {
    const now = this.deps.clock.now();
    const at = new Date(now).toISOString();
    const shard = this.deps.keys.forId(taskId);
    const write = new AtomicWrite(shard)
      .guard(shard.task(taskId), LIVE_TASK_STATUSES)
      .patch({ status, closedAt: at, closedBy: actor }, { expiry: { seconds: this.retentionSeconds } })
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
      { type: CLOSINGS[status], actor, agentId: task?.agentId, taskId, reason: status },
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

  /** Ends a task whose time is up; called by the task expiry job. */
  async expireIfDue(taskId: string): Promise<boolean> {
    const shard = this.deps.keys.forId(taskId);
    const task = await this.deps.tasks.get(taskId);
    if (!task || !LIVE_TASK_STATUSES.includes(task.status)) {
      await this.deps.redis.zrem(shard.liveTasks, taskId);
      return false;
    }
    if (Date.parse(task.expiresAt) > this.deps.clock.now()) {
      await this.deps.redis.zadd(shard.liveTasks, Date.parse(task.expiresAt), taskId);
      return false;
    }
    return (await this.close(taskId, "expired", "system")) !== undefined;
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
