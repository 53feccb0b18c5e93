import { randomInt } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import type { Clock } from "../clock.ts";
import type { NotificationEvent } from "../config.ts";
import { InvalidRequestError } from "../errors.ts";
import { isSecretField, type Logger, redactText } from "../logger.ts";
import { type RedisKeys, type ShardKeys, sendEach } from "../redis.ts";
import {
  type AtomicResult,
  AtomicWrite,
  type AtomicWriter,
  type BatchPatch,
  type PreparedEvent,
} from "../store/atomic-write.ts";

export const AUDIT_EVENT_TYPES = [
  "task_created",
  "task_rejected",
  "task_approval_recorded",
  "task_approval_refused",
  "task_approved",
  "task_denied",
  "task_completed",
  "task_expired",
  "task_revoked",
  "lease_issued",
  "lease_denied",
  "lease_issue_failed",
  "lease_renewed",
  "lease_revoke_requested",
  "lease_revoked",
  "lease_revoke_failed",
  "revocation_requested",
  "orphan_revoked",
  "identity_rejected",
  "identity_rejected_summary",
  "access_denied",
  "introspected",
  "tool_call",
  "lease_delegated",
  "delegation_denied",
] as const;
export type AuditEventType = (typeof AUDIT_EVENT_TYPES)[number];

/**
 * The notification name of an audit event, if clients may wait for it: a task created
 * `pending` is `task_pending`; decisions, task endings and revocation outcomes keep their type.
 */
export function notificationName(event: { type: string; status?: unknown }): NotificationEvent | undefined {
  switch (event.type) {
    case "task_created":
      return event.status === "pending" ? "task_pending" : undefined;
    case "task_approved":
    case "task_denied":
    case "task_completed":
    case "task_expired":
    case "task_revoked":
    case "lease_revoked":
    case "lease_revoke_failed":
      return event.type;
    default:
      return undefined;
  }
}

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

/** Where an event sits in the trail: stream time, sequence, shard. Events sort by it. */
interface EventPosition {
  ms: number;
  seq: number;
  shard: number;
}

/** Longest string kept in an audit field; longer ones are cut (a goal is at most 2,000). */
const MAX_FIELD_CHARS = 2048;
const MAX_ARRAY_ITEMS = 64;

/** A stored event's public id: `<ms>-<seq>-<shard>`. */
export function publicEventId(streamId: string, shard: number): string {
  return `${streamId}-${shard}`;
}

/** Parses a public event id; `invalid_request` for anything else. */
export function parseEventId(id: string, shardCount: number): EventPosition {
  const match = /^(\d{1,15})-(\d{1,15})-(\d{1,3})$/.exec(id);
  const position = match
    ? { ms: Number(match[1]), seq: Number(match[2]), shard: Number(match[3]) }
    : undefined;
  if (!position || position.shard >= shardCount)
    throw new InvalidRequestError(`not an audit event id: ${id.slice(0, 64)}`);
  return position;
}

function positionOf(streamId: string, shard: number): EventPosition {
  const [ms, seq] = streamId.split("-");
  return { ms: Number(ms), seq: Number(seq), shard };
}

function compare(a: EventPosition, b: EventPosition): number {
  return a.ms - b.ms || a.seq - b.seq || a.shard - b.shard;
}

/**
 * An event as it is stored, in one walk: every string and array capped, so no caller can make
 * the trail store unbounded data, and secret-looking fields and values redacted.
 */
function storable(value: unknown, depth = 0): unknown {
  if (typeof value === "string")
    return redactText(value.length > MAX_FIELD_CHARS ? `${value.slice(0, MAX_FIELD_CHARS)}…[cut]` : value);
  if (depth > 4) return "[too deep]";
  if (Array.isArray(value)) return value.slice(0, MAX_ARRAY_ITEMS).map((item) => storable(item, depth + 1));
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    let fields = 0;
    for (const field in value) {
      if (!Object.hasOwn(value, field)) continue;
      if (fields++ === MAX_ARRAY_ITEMS) break;
      const inner = (value as Record<string, unknown>)[field];
      if (inner !== undefined) out[field] = isSecretField(field) ? "[redacted]" : storable(inner, depth + 1);
    }
    return out;
  }
  return value;
}

/**
 * The audit trail. Each event is stored once, in its shard's Redis stream, written in the
 * same Lua script as the state change it records; per-task and per-agent lists of event ids
 * index it. Everything is trimmed by the retention period (stream `MINID`, list trimming and
 * key TTLs). Each event also becomes one JSON log line.
 */
export class AuditLog {
  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      writer: AtomicWriter;
      logger: Logger;
      clock: Clock;
      /** The task a lease belongs to, for lease-filtered queries. */
      taskOfLease(leaseId: string): Promise<string | undefined>;
    },
  ) {}

  /**
   * Adds an event to `write`, in the write's shard: indexed under its task (when it names one)
   * and its agent. Secret-looking fields are redacted and every field is bounded first.
   */
  add(write: AtomicWrite, input: AuditInput, options: { movedCountField?: string } = {}): void {
    write.event(this.prepare(write.shard, input), options);
  }

  /** An event as it is stored in `shard`, for a write to carry (see {@link add}). */
  prepare(shard: ShardKeys, input: AuditInput): PreparedEvent {
    const body = storable({ at: new Date(this.deps.clock.now()).toISOString(), ...input });
    const indexKeys: string[] = [];
    if (input.taskId) indexKeys.push(shard.auditOfTask(input.taskId));
    if (input.agentId) indexKeys.push(shard.auditOfAgent(input.agentId));
    return { json: JSON.stringify(body), indexKeys, publish: notificationName(input) !== undefined };
  }

  /** Applies patches of one shape, each with its event (see {@link AtomicWriter.runPatches}), and logs the events of those applied. */
  async applyPatches(patches: readonly BatchPatch[]): Promise<boolean[]> {
    const ids = await this.deps.writer.runPatches(patches);
    return patches.map((patch, i) => {
      const id = ids[i];
      if (id !== undefined) this.log(patch.event.json, id, patch.shard.index);
      return id !== undefined;
    });
  }

  /** Applies a write and logs the events it wrote. */
  async apply(write: AtomicWrite): Promise<AtomicResult> {
    const result = await this.deps.writer.run(write);
    this.logApplied(write, result);
    return result;
  }

  /** Applies independent writes (pipelined) and logs the events of each that was applied. */
  async applyAll(writes: readonly AtomicWrite[]): Promise<AtomicResult[]> {
    const results = await this.deps.writer.runAll(writes);
    writes.forEach((write, i) => {
      this.logApplied(write, results[i] as AtomicResult);
    });
    return results;
  }

  /** Records an event on its own (a decision that changes no record). */
  async record(input: AuditInput): Promise<AuditEvent> {
    const write = new AtomicWrite(this.shardFor(input));
    this.add(write, input);
    const result = await this.apply(write);
    const body = JSON.parse(write.eventJson(0) ?? "{}") as Omit<AuditEvent, "id">;
    return { id: publicEventId(result.eventIds[0] ?? "0-0", write.shard.index), ...body } as AuditEvent;
  }

  /** Events oldest first, filtered by at most one entity (the most specific given). */
  async query(query: AuditQuery): Promise<AuditEvent[]> {
    const { keys } = this.deps;
    const after = query.after ? parseEventId(query.after, keys.shardCount) : undefined;
    if (query.leaseId) {
      const taskId = await this.deps.taskOfLease(query.leaseId);
      if (!taskId) return [];
      const events = await this.fromIndexes(
        [keys.forId(taskId)],
        (shard) => shard.auditOfTask(taskId),
        after,
      );
      return events
        .filter(
          (event) => event.leaseId === query.leaseId && (!query.agentId || event.agentId === query.agentId),
        )
        .slice(0, query.limit);
    }
    if (query.taskId) {
      const taskId = query.taskId;
      const events = await this.fromIndexes(
        [keys.forId(taskId)],
        (shard) => shard.auditOfTask(taskId),
        after,
      );
      return events
        .filter((event) => !query.agentId || event.agentId === query.agentId)
        .slice(0, query.limit);
    }
    if (query.agentId) {
      const agentId = query.agentId;
      return (await this.fromIndexes(keys.shards, (shard) => shard.auditOfAgent(agentId), after)).slice(
        0,
        query.limit,
      );
    }
    return this.fromStreams(after, query.limit);
  }

  /** Events named by index lists, oldest first, after the cursor. */
  private async fromIndexes(
    shards: readonly ShardKeys[],
    indexOf: (shard: ShardKeys) => string,
    after: EventPosition | undefined,
  ): Promise<AuditEvent[]> {
    const perShard = await Promise.all(
      shards.map(async (shard) => {
        const ids = (await this.deps.redis.lrange(indexOf(shard), 0, -1)).filter(
          (id) => !after || compare(positionOf(id, shard.index), after) > 0,
        );
        if (ids.length === 0) return [];
        const replies = await sendEach(this.deps.redis, ids, (target, id) =>
          (target as Redis).xrange(shard.audit, id, id),
        );
        return replies.flatMap(([error, entries]) =>
          error ? [] : toEvents(entries as [string, string[]][], shard.index),
        );
      }),
    );
    return perShard.flat().sort((a, b) => compare(positionOfEvent(a), positionOfEvent(b)));
  }

  /** The whole trail, oldest first: each shard's stream from the cursor, merged. */
  private async fromStreams(after: EventPosition | undefined, limit: number): Promise<AuditEvent[]> {
    const perShard = await Promise.all(
      this.deps.keys.shards.map(async (shard) => {
        let start = "-";
        if (after)
          start = shard.index <= after.shard ? `(${after.ms}-${after.seq}` : `${after.ms}-${after.seq}`;
        return toEvents(await this.deps.redis.xrange(shard.audit, start, "+", "COUNT", limit), shard.index);
      }),
    );
    return perShard
      .flat()
      .sort((a, b) => compare(positionOfEvent(a), positionOfEvent(b)))
      .slice(0, limit);
  }

  /** Events with no task go to their agent's shard, or any shard. */
  private shardFor(input: AuditInput): ShardKeys {
    const { keys } = this.deps;
    if (input.taskId) return keys.forId(input.taskId);
    if (input.leaseId) return keys.forId(input.leaseId);
    if (input.agentId) return keys.forAgent(input.agentId);
    return keys.shard(randomInt(keys.shardCount));
  }

  /** Logs the events of an applied write: only this log adds events to writes. */
  private logApplied(write: AtomicWrite, result: AtomicResult): void {
    // Nothing to build when nobody reads audit lines (log.level above info).
    if (!write.hasEvents || !result.ok || !this.deps.logger.isLevelEnabled("info")) return;
    for (let i = 0, json = write.eventJson(0); json !== undefined; json = write.eventJson(++i))
      this.log(json, result.eventIds[i], write.shard.index);
  }

  /** One event's log line, as it was stored (redacted when prepared), its id first. */
  private log(json: string, streamId: string | undefined, shard: number): void {
    if (!this.deps.logger.isLevelEnabled("info")) return;
    // A stored event always holds `at`, so there is a member to put the id before.
    const line = streamId ? `{"id":${JSON.stringify(publicEventId(streamId, shard))},${json.slice(1)}` : json;
    this.deps.logger.infoWithJson("audit", "audit", line);
  }
}

function toEvents(entries: [string, string[]][], shard: number): AuditEvent[] {
  return entries.map(
    ([streamId, fields]) =>
      ({ id: publicEventId(streamId, shard), ...JSON.parse(fields[1] ?? "{}") }) as AuditEvent,
  );
}

function positionOfEvent(event: AuditEvent): EventPosition {
  const [ms, seq, shard] = event.id.split("-").map(Number);
  return { ms: ms ?? 0, seq: seq ?? 0, shard: shard ?? 0 };
}
