import type { Redis } from "ioredis";
import type { RevocationQueue } from "../../jobs/queues.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import type { Classification, Config } from "../config.ts";
import { ForbiddenError, NotFoundError, PolicyDeniedError, TaskClosedError } from "../errors.ts";
import {
  type AgentPrincipal,
  actorOf,
  type OperatorPrincipal,
  type Principal,
} from "../identity/principal.ts";
import { DEFAULT_TENANT, newId } from "../ids.ts";
import type { LeaseService } from "../leases/lease-service.ts";
import type { Metrics } from "../metrics.ts";
import type { PolicyEngine } from "../policy/policy-engine.ts";
import type { RecordStore, RedisKeys } from "../redis.ts";
import { LIVE_TASK_STATUSES, type Task, type TaskStatus } from "./task.ts";

export interface TaskServiceDeps {
  redis: Redis;
  keys: RedisKeys;
  tasks: RecordStore<Task>;
  leasesService: LeaseService;
  policy: PolicyEngine;
  queue: RevocationQueue;
  audit: AuditLog;
  metrics: Metrics;
  clock: Clock;
  config: Pick<Config, "tasks" | "retention">;
}

export interface NewTask {
  goal: string;
  resources: { resource: string; scopes: string[] }[];
  dataClassification?: Classification;
  ttlSeconds?: number;
}

/** How a task ended, and the lease revoke reason that goes with it. */
const CLOSINGS = {
  completed: { audit: "task_completed", leaseReason: "task_completed" },
  expired: { audit: "task_expired", leaseReason: "expired" },
  revoked: { audit: "task_revoked", leaseReason: "operator" },
} as const;

/** Tasks: declared goals that an operator or a policy rule approves, and that end. */
export class TaskService {
  constructor(private readonly deps: TaskServiceDeps) {}

  /** Creates a task; `approved` at once when every rule involved allows auto-approval. */
  async create(agent: AgentPrincipal, request: NewTask): Promise<Task> {
    const { clock, policy, audit, config } = this.deps;
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
      createdAt: new Date(now).toISOString(),
      expiresAt: new Date(now + ttlSeconds * 1000).toISOString(),
      ...(decision.autoApprove
        ? { approvedAt: new Date(now).toISOString(), approvedBy: decision.approvedBy }
        : {}),
    };
    const { redis, keys } = this.deps;
    const multi = this.deps.tasks
      .createIn(redis.multi(), task)
      .zadd(keys.allTasks, now, task.id)
      .zadd(keys.liveTasks, Date.parse(task.expiresAt), task.id)
      .sadd(keys.agentTasks(agent.id), task.id);
    if (task.status === "pending") multi.zadd(keys.pendingTasks, now, task.id);
    const results = await multi.exec();
    if (results?.[0]?.[1] !== "OK") throw new Error(`task ${task.id} could not be written`);
    await this.deps.queue.scheduleTaskExpiry(task.id, new Date(task.expiresAt), now);
    await audit.record({
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
      await audit.record({
        type: "task_approved",
        actor: decision.approvedBy ?? "policy",
        agentId: agent.id,
        taskId: task.id,
        decision: "allow",
        reason: "auto-approved by policy",
      });
    }
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

  /** Tasks newest first; `pending` comes from its own index. */
  async list(filter: { status?: TaskStatus; agentId?: string; limit: number }): Promise<Task[]> {
    const { redis, keys } = this.deps;
    const ids = filter.agentId
      ? await redis.smembers(keys.agentTasks(filter.agentId))
      : await redis.zrevrange(
          filter.status === "pending" ? keys.pendingTasks : keys.allTasks,
          0,
          filter.limit * 10 - 1,
        );
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

  /** Approves or denies a pending task. */
  async decide(taskId: string, operator: OperatorPrincipal, approve: boolean, note?: string): Promise<Task> {
    const task = await this.get(taskId, operator);
    const now = this.deps.clock.now();
    if (task.status !== "pending") throw new TaskClosedError(taskId, task.status);
    if (Date.parse(task.expiresAt) <= now) {
      await this.close(taskId, "expired", "system");
      throw new TaskClosedError(taskId, "expired");
    }
    const at = new Date(now).toISOString();
    const patch: Partial<Task> = approve
      ? { status: "approved", approvedAt: at, approvedBy: operator.id }
      : { status: "denied", deniedAt: at, deniedBy: operator.id, closedAt: at };
    if (note) patch.note = note;
    const result = await this.deps.tasks.transition(taskId, ["pending"], patch);
    if (!result.changed || !result.record)
      throw new TaskClosedError(taskId, result.record?.status ?? "missing");
    const pipeline = this.deps.redis.pipeline().zrem(this.deps.keys.pendingTasks, taskId);
    if (!approve) pipeline.zrem(this.deps.keys.liveTasks, taskId);
    await pipeline.exec();
    if (!approve) await this.keepForRetention(taskId);
    await this.deps.audit.record({
      type: approve ? "task_approved" : "task_denied",
      actor: actorOf(operator),
      agentId: task.agentId,
      taskId,
      decision: approve ? "allow" : "deny",
      reason: note,
    });
    return result.record;
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
   * Ends a live task as completed, expired or revoked and fans revocation out to its leases.
   * Returns undefined when the task was not live (someone else ended it first).
   */
  async close(
    taskId: string,
    status: keyof typeof CLOSINGS,
    actor: string,
  ): Promise<{ task: Task; revoking: number } | undefined> {
    const { redis, keys } = this.deps;
    const at = new Date(this.deps.clock.now()).toISOString();
    const result = await this.deps.tasks.transition(taskId, LIVE_TASK_STATUSES, {
      status,
      closedAt: at,
      closedBy: actor,
    });
    if (!result.changed || !result.record) return undefined;
    const task = result.record;
    await redis.pipeline().zrem(keys.pendingTasks, taskId).zrem(keys.liveTasks, taskId).exec();
    await this.keepForRetention(taskId);
    // Read the lease set only after the task is closed: a mint racing with us either wrote its
    // lease before this read (and is revoked here) or sees the task closed and revokes itself.
    const leaseIds = await redis.smembers(keys.taskLeases(taskId));
    const closing = CLOSINGS[status];
    // Revoke lag for an expired task counts from when it was due, not from when it was noticed.
    const dueAt = status === "expired" ? new Date(task.expiresAt) : undefined;
    const moved = await this.deps.leasesService.requestRevoke(leaseIds, closing.leaseReason, actor, dueAt);
    await this.deps.audit.record({
      type: closing.audit,
      actor,
      agentId: task.agentId,
      taskId,
      reason: status,
      revoking: moved.length,
    });
    return { task, revoking: moved.length };
  }

  /** A closed task's record stays readable for the retention period; its audit events stay for good. */
  private async keepForRetention(taskId: string): Promise<void> {
    await this.deps.tasks.expireAfter(taskId, this.deps.config.retention.leaseRecordDays * 86_400);
  }

  /** Ends a task whose time is up; called by its expiry job and the reconciler. */
  async expireIfDue(taskId: string): Promise<boolean> {
    const task = await this.deps.tasks.get(taskId);
    if (!task) {
      await this.deps.redis.zrem(this.deps.keys.liveTasks, taskId);
      return false;
    }
    if (!LIVE_TASK_STATUSES.includes(task.status) || Date.parse(task.expiresAt) > this.deps.clock.now())
      return false;
    return (await this.close(taskId, "expired", "system")) !== undefined;
  }

  /** Live task ids matching an operator's revocation selector. */
  async liveTaskIds(selector: { taskId?: string; agentId?: string; all?: boolean }): Promise<string[]> {
    const { redis, keys } = this.deps;
    if (selector.taskId) return [selector.taskId];
    const ids = selector.agentId
      ? await redis.smembers(keys.agentTasks(selector.agentId))
      : selector.all
        ? await redis.zrange(keys.liveTasks, 0, -1)
        : [];
    const tasks = await this.deps.tasks.getMany(ids);
    return tasks.filter((task) => LIVE_TASK_STATUSES.includes(task.status)).map((task) => task.id);
  }
}
