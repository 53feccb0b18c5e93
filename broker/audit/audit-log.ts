import type { Redis } from "ioredis";
import type { Logger } from "winston";
import type { Clock } from "../clock.ts";
import { redact } from "../logger.ts";
import type { RedisKeys } from "../redis.ts";

export const AUDIT_EVENT_TYPES = [
  "task_created",
  "task_rejected",
  "task_approved",
  "task_denied",
  "task_completed",
  "task_expired",
  "task_revoked",
  "lease_issued",
  "lease_denied",
  "lease_issue_failed",
  "lease_revoke_requested",
  "lease_revoked",
  "lease_revoke_failed",
  "revocation_requested",
  "orphan_revoked",
  "identity_rejected",
  "identity_rejected_summary",
  "access_denied",
  "introspected",
] as const;
export type AuditEventType = (typeof AUDIT_EVENT_TYPES)[number];

/** What a caller records; the log adds `id` and `at`. Never holds a secret. */
export interface AuditInput {
  type: AuditEventType;
  /** Who caused it: `agent:<id>`, `operator:<name>`, `introspector:<name>`, `policy:<rule>`, `system`. */
  actor: string;
  agentId?: string;
  taskId?: string;
  leaseId?: string;
  resource?: string;
  decision?: "allow" | "deny";
  reason?: string;
  [extra: string]: unknown;
}

/** One audit record as stored and served. */
export type AuditEvent = AuditInput & { id: string; at: string };

export interface AuditQuery {
  taskId?: string;
  agentId?: string;
  leaseId?: string;
  /** Only events after this event id (for paging). */
  after?: string;
  limit: number;
}

/**
 * The audit trail: an append-only Redis stream (plus per-task, per-agent and per-lease
 * streams that index it) and a JSON log line for each event.
 */
export class AuditLog {
  constructor(
    private readonly redis: Redis,
    private readonly keys: RedisKeys,
    private readonly logger: Logger,
    private readonly clock: Clock,
  ) {}

  /** Records an event. Secret-looking fields are redacted before anything is written. */
  async record(input: AuditInput): Promise<AuditEvent> {
    const at = new Date(this.clock.now()).toISOString();
    const body = redact({ at, ...input }) as Omit<AuditEvent, "id">;
    const json = JSON.stringify(body);
    const id = (await this.redis.xadd(this.keys.auditStream(), "*", "event", json)) as string;
    const indexes: { kind: "task" | "agent" | "lease"; id: string }[] = [];
    if (input.taskId) indexes.push({ kind: "task", id: input.taskId });
    if (input.agentId) indexes.push({ kind: "agent", id: input.agentId });
    if (input.leaseId) indexes.push({ kind: "lease", id: input.leaseId });
    if (indexes.length > 0) {
      const pipeline = this.redis.pipeline();
      for (const index of indexes) pipeline.xadd(this.keys.auditStream(index), id, "event", json);
      await pipeline.exec();
    }
    const event = { id, ...body } as AuditEvent;
    this.logger.info("audit", { audit: event });
    return event;
  }

  /** Events oldest first, filtered by at most one entity (the most specific given). */
  async query(query: AuditQuery): Promise<AuditEvent[]> {
    let index: { kind: "task" | "agent" | "lease"; id: string } | undefined;
    if (query.leaseId) index = { kind: "lease", id: query.leaseId };
    else if (query.taskId) index = { kind: "task", id: query.taskId };
    else if (query.agentId) index = { kind: "agent", id: query.agentId };
    const start = query.after ? `(${query.after}` : "-";
    const entries = await this.redis.xrange(
      this.keys.auditStream(index),
      start,
      "+",
      "COUNT",
      query.limit * 2,
    );
    const events = entries.map(([id, fields]) => ({ id, ...JSON.parse(fields[1] ?? "{}") }) as AuditEvent);
    return events
      .filter(
        (event) =>
          (!query.taskId || event.taskId === query.taskId) &&
          (!query.agentId || event.agentId === query.agentId) &&
          (!query.leaseId || event.leaseId === query.leaseId),
      )
      .slice(0, query.limit);
  }
}
