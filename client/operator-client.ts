import { setTimeout as sleep } from "node:timers/promises";
import { completeTask, readLease, readTask, releaseLease } from "./shared-routes.ts";
import { BrokerTransport, type RetryOptions } from "./transport.ts";
import type {
  AuditEvent,
  AuditVerification,
  Lease,
  LeaseStatus,
  Revocation,
  Task,
  TaskStatus,
} from "./types.ts";

export interface JitkeyOperatorClientOptions {
  /** The broker's base URL. */
  broker: string | URL;
  /** The operator's bearer token (its sha256 is in the broker's `operators` config). */
  operatorToken: string;
  retry?: RetryOptions;
  requestTimeoutMs?: number;
}

/** Exactly one of these says which leases an operator revocation hits. */
export type RevocationTarget =
  | { leaseId: string }
  | { taskId: string }
  | { agentId: string }
  | { resource: string }
  | { all: true };

export interface AuditQuery {
  taskId?: string;
  agentId?: string;
  leaseId?: string;
  /** Only events after this event id (paging cursor). */
  after?: string;
  /** At most this many events in one answer (1–1000, default 100). */
  limit?: number;
}

export interface AuditStreamOptions {
  /** Keep polling for new events after the last page (default false: stop at the end). */
  follow?: boolean;
  /** Pause between polls when following (default 2000 ms). */
  intervalMs?: number;
  /** Events per request (default 500). */
  pageSize?: number;
  /** Stops following. */
  signal?: AbortSignal;
}

/**
 * An operator's client: review and decide tasks, list leases, force revocation, read the
 * audit trail. Operators never receive credentials.
 *
 * @example
 * ```ts
 * const operator = new JitkeyOperatorClient({ broker: "https://jitkey.example.com", operatorToken });
 * for (const task of await operator.listTasks({ status: "pending" })) await operator.approve(task.id, { note: "ok" });
 * ```
 */
export class JitkeyOperatorClient {
  readonly #http: BrokerTransport;

  constructor(options: JitkeyOperatorClientOptions) {
    this.#http = new BrokerTransport({ ...options, token: options.operatorToken });
  }

  /** Tasks, newest first. */
  async listTasks(filter: { status?: TaskStatus; agentId?: string; limit?: number } = {}): Promise<Task[]> {
    const { tasks } = await this.#http.send<{ tasks: Task[] }>({
      method: "GET",
      path: "/v1/tasks",
      query: { ...filter },
      idempotent: true,
    });
    return tasks;
  }

  getTask(taskId: string): Promise<Task> {
    return readTask(this.#http, taskId);
  }

  /** Approves a pending task. */
  async approve(
    taskId: string,
    options: {
      note?: string;
      /** Approve only these resources and scopes (a subset of the task's); the rest are dropped. */
      resources?: { resource: string; scopes: string[] }[];
      /** End the task at most this many seconds after the approval. */
      ttlSeconds?: number;
    } = {},
  ): Promise<Task> {
    return this.#decide(taskId, "approve", options);
  }

  /** Denies a pending task. */
  async deny(taskId: string, options: { note?: string } = {}): Promise<Task> {
    return this.#decide(taskId, "deny", options);
  }

  async #decide(taskId: string, decision: "approve" | "deny", body: Record<string, unknown>): Promise<Task> {
    const { task } = await this.#http.send<{ task: Task }>({
      method: "POST",
      path: `/v1/tasks/${encodeURIComponent(taskId)}/${decision}`,
      body: Object.fromEntries(Object.entries(body).filter(([, value]) => value !== undefined)),
      idempotent: false,
    });
    return task;
  }

  /** Completes a task on its agent's behalf: every lease of it is revoked. */
  completeTask(taskId: string): Promise<{ task: Task; revoking: number }> {
    return completeTask(this.#http, taskId);
  }

  async listLeases(
    filter: {
      status?: LeaseStatus;
      taskId?: string;
      agentId?: string;
      resource?: string;
      limit?: number;
    } = {},
  ): Promise<Lease[]> {
    const { leases } = await this.#http.send<{ leases: Lease[] }>({
      method: "GET",
      path: "/v1/leases",
      query: { ...filter },
      idempotent: true,
    });
    return leases;
  }

  getLease(leaseId: string): Promise<Lease> {
    return readLease(this.#http, leaseId);
  }

  /** Releases one lease now, as `jitkey revoke --lease` does without ending its task. */
  release(leaseId: string): Promise<Lease> {
    return releaseLease(this.#http, leaseId);
  }

  /**
   * Forces revocation of every lease `target` selects; the live tasks it names end as
   * `revoked`. `matched` counts the leases hit, `tasksRevoked` the tasks ended.
   */
  async revoke(target: RevocationTarget, reason: string): Promise<Revocation> {
    const { revocation } = await this.#http.send<{ revocation: Revocation }>({
      method: "POST",
      path: "/v1/revocations",
      body: { ...target, reason },
      idempotent: false,
    });
    return revocation;
  }

  /**
   * Has the audit trail been tampered with? The broker recomputes its hash chains against the
   * signed checkpoints: `ok`, or the first event of the first segment that does not match.
   */
  verifyAudit(): Promise<AuditVerification> {
    return this.#http.send<AuditVerification>({ method: "GET", path: "/v1/audit/verify", idempotent: true });
  }

  /** The whole trail with its signed checkpoints and the broker's public keys, as JSON Lines. */
  exportAudit(): Promise<string> {
    return this.#http.text({ method: "GET", path: "/v1/audit/export", idempotent: true });
  }

  /** One page of audit events, oldest first. */
  async audit(query: AuditQuery = {}): Promise<AuditEvent[]> {
    const { events } = await this.#http.send<{ events: AuditEvent[] }>({
      method: "GET",
      path: "/v1/audit",
      query: { ...query },
      idempotent: true,
    });
    return events;
  }

  /**
   * Every audit event matching `query`, oldest first, paging with the `after` cursor; with
   * `follow` it then polls for new events until `signal` aborts.
   *
   * @example
   * ```ts
   * for await (const event of operator.auditEvents({ taskId }, { follow: true, signal })) console.log(event.type);
   * ```
   */
  async *auditEvents(query: AuditQuery = {}, options: AuditStreamOptions = {}): AsyncGenerator<AuditEvent> {
    let after = query.after;
    const limit = options.pageSize ?? 500;
    for (;;) {
      if (options.signal?.aborted) return;
      const page = await this.audit({ ...query, after, limit });
      for (const event of page) yield event;
      const last = page.at(-1);
      if (last) {
        after = last.id;
        continue;
      }
      if (!options.follow) return;
      try {
        await sleep(options.intervalMs ?? 2000, undefined, { signal: options.signal });
      } catch {
        return;
      }
    }
  }
}
