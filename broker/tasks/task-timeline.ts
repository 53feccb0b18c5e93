import { type AuditEvent, type AuditEventType, type AuditLog, publicEventId } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import type { Config } from "../config.ts";
import {
  ForbiddenError,
  InvalidRequestError,
  NotFoundError,
  RateLimitedError,
  TaskClosedError,
  TaskNotApprovedError,
} from "../errors.ts";
import {
  type AgentPrincipal,
  actorOf,
  type IntrospectorPrincipal,
  type Principal,
} from "../identity/principal.ts";
import type { Lease } from "../leases/lease.ts";
import type { RedisKeys } from "../redis.ts";
import { AtomicWrite } from "../store/atomic-write.ts";
import type { RecordStore } from "../store/record-store.ts";
import type { Task } from "./task.ts";
import type { TaskService } from "./task-service.ts";

/** What an agent or a tool server reports having done for a task. */
export interface ToolCall {
  type: "tool_call";
  /** The lease whose credential the call used. */
  leaseId?: string;
  tool: string;
  action: string;
  target?: string;
  outcome?: "ok" | "error" | "denied";
  detail?: string;
}

/** How the timeline labels an audit event. */
export const TIMELINE_CATEGORIES = [
  "identity",
  "approval",
  "policy",
  "lease",
  "tool_call",
  "revocation",
] as const;
export type TimelineCategory = (typeof TIMELINE_CATEGORIES)[number];

/**
 * The label of each event type a task's trail can hold. Declaring the task is the identity
 * step (who, verified by which issuer, owned by whom), as is someone else trying to reach it;
 * a task's end is filed with revocation, because ending a task revokes what it holds.
 */
export const CATEGORY_OF: Record<AuditEventType, TimelineCategory> = {
  task_created: "identity",
  access_denied: "identity",
  identity_rejected: "identity",
  identity_rejected_summary: "identity",
  task_rejected: "policy",
  task_approval_recorded: "approval",
  task_approval_refused: "approval",
  task_approved: "approval",
  task_denied: "approval",
  lease_denied: "policy",
  introspected: "policy",
  lease_issued: "lease",
  lease_issue_failed: "lease",
  lease_renewed: "lease",
  lease_delegated: "lease",
  delegation_denied: "policy",
  tool_call: "tool_call",
  task_completed: "revocation",
  task_expired: "revocation",
  task_revoked: "revocation",
  lease_revoke_requested: "revocation",
  lease_revoked: "revocation",
  lease_revoke_failed: "revocation",
  revocation_requested: "revocation",
  orphan_revoked: "revocation",
};

/** The label of an event type; types added later without one are labelled by their prefix. */
export function categoryOf(type: string): TimelineCategory {
  const known = CATEGORY_OF[type as AuditEventType];
  if (known) return known;
  if (type.startsWith("lease_")) return "lease";
  if (type.startsWith("task_")) return "approval";
  return "policy";
}

/** An audit event in a task's timeline, with its label. */
export type TimelineEvent = AuditEvent & { category: TimelineCategory };

/**
 * The tool-call log and the task timeline. Tool calls are audit events (`tool_call`) written
 * in the task's shard, indexed under the task and its agent like every other event, so the
 * timeline is the task's audit index read in order, each event labelled.
 *
 * Who may record: the agent that owns the task, and a tool server — an `introspectors` entry —
 * about a lease of the task for one of its resources. The agent's account is its own word;
 * the tool server's is the other side's record of what the credential was used for, and it
 * can only speak of credentials it would be told about on introspection.
 */
export class TaskTimeline {
  constructor(
    private readonly deps: {
      keys: RedisKeys;
      tasks: Pick<TaskService, "get">;
      taskStore: RecordStore<Task>;
      leaseStore: RecordStore<Lease>;
      audit: AuditLog;
      clock: Clock;
      limits: Pick<Config["limits"], "agentRequestsPerMinute">;
      /** Counts tool servers' writes against the per-minute limit agents have (shared by brokers). */
      limiter: {
        hit(bucket: string, limit: number): Promise<{ exceeded: boolean; retryAfterSeconds: number }>;
      };
    },
  ) {}

  /**
   * Records a tool call on an approved, unexpired task. The task's status is checked in the
   * same write that stores the event. Returns the stored event.
   */
  async record(
    taskId: string,
    principal: AgentPrincipal | IntrospectorPrincipal,
    call: ToolCall,
  ): Promise<AuditEvent> {
    const task =
      principal.kind === "agent"
        ? await this.deps.tasks.get(taskId, principal)
        : await this.deps.taskStore.get(taskId);
    if (!task) throw new NotFoundError("task");
    const lease = call.leaseId ? await this.leaseOf(task, call.leaseId) : undefined;
    if (principal.kind === "introspector") await this.checkToolServer(principal, task, lease);
    const now = this.deps.clock.now();
    const shard = this.deps.keys.forId(taskId);
    const write = new AtomicWrite(shard).guard(shard.task(taskId), ["approved"], {
      laterThan: { expiresAt: new Date(now).toISOString() },
    });
    this.deps.audit.add(write, {
      type: "tool_call",
      actor: actorOf(principal),
      agentId: task.agentId,
      taskId,
      leaseId: lease?.id,
      resource: lease?.resource,
      source: principal.kind === "agent" ? "agent" : "tool_server",
      tool: call.tool,
      action: call.action,
      target: call.target,
      outcome: call.outcome,
      detail: call.detail,
      // What the lease was when the call was reported: a call made with a revoked credential shows.
      leaseStatus: lease?.status,
    });
    const result = await this.deps.audit.apply(write);
    if (!result.ok) {
      const current = result.record ? (JSON.parse(result.record) as Task) : undefined;
      if (current?.status === "pending") throw new TaskNotApprovedError(taskId);
      throw new TaskClosedError(
        taskId,
        current?.status === "approved" ? "expired" : (current?.status ?? "missing"),
      );
    }
    const body = JSON.parse(write.eventJson(0) ?? "{}") as Omit<AuditEvent, "id">;
    return { id: publicEventId(result.eventIds[0] ?? "0-0", shard.index), ...body } as AuditEvent;
  }

  /** The task's audit events, oldest first, each labelled; for its owner agent or an operator. */
  async timeline(
    taskId: string,
    principal: Principal,
    page: { after?: string; limit: number },
  ): Promise<TimelineEvent[]> {
    await this.deps.tasks.get(taskId, principal);
    const events = await this.deps.audit.query({ taskId, after: page.after, limit: page.limit });
    return events.map((event) => ({ ...event, category: categoryOf(event.type) }));
  }

  /** The lease named by a tool call: it must be one of the task's. */
  private async leaseOf(task: Task, leaseId: string): Promise<Lease> {
    const lease = await this.deps.leaseStore.get(leaseId);
    if (!lease || lease.taskId !== task.id)
      throw new InvalidRequestError(
        "leaseId is not a lease of this task",
        { issues: [{ path: "leaseId", message: "not a lease of this task" }] },
        422,
      );
    return lease;
  }

  /**
   * A tool server speaks only of a lease of the task for a resource it may introspect, and
   * within the same per-minute budget as an agent.
   */
  private async checkToolServer(
    introspector: IntrospectorPrincipal,
    task: Task,
    lease: Lease | undefined,
  ): Promise<void> {
    if (!lease || (introspector.resources && !introspector.resources.includes(lease.resource))) {
      await this.deps.audit.record({
        type: "access_denied",
        actor: actorOf(introspector),
        ownerAgentId: task.agentId,
        taskId: task.id,
        leaseId: lease?.id,
        decision: "deny",
        reason: lease
          ? `${actorOf(introspector)} may not speak of ${lease.resource} credentials`
          : "a tool server must name the lease the call used",
      });
      throw new ForbiddenError("a tool server records calls only about a lease of one of its resources");
    }
    const usage = await this.deps.limiter.hit(
      `tool-server:${introspector.id}`,
      this.deps.limits.agentRequestsPerMinute,
    );
    if (usage.exceeded) throw new RateLimitedError(usage.retryAfterSeconds);
  }
}
