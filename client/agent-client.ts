import { TaskClosedError } from "./errors.ts";
import { completeTask, readLease, readTask, releaseLease } from "./shared-routes.ts";
import { BrokerTransport, type RetryOptions, type TokenSource } from "./transport.ts";
import type { Credential, Lease, MintedLease, Task, TaskRequest } from "./types.ts";
import { waitForTask } from "./wait-for-approval.ts";

/** How an agent reaches the broker and proves who it is. */
export interface JitkeyClientOptions {
  /** The broker's base URL, e.g. `https://jitkey.example.com`. */
  broker: string | URL;
  /**
   * The workload's identity JWT, or a function returning it (or a promise of it), called
   * before every request so rotated tokens are picked up (see `detectIdentityToken`).
   */
  identityToken: TokenSource;
  /** Retries of requests that are safe to repeat. */
  retry?: RetryOptions;
  /** How long one request may take before it counts as a network failure (default 30 s). */
  requestTimeoutMs?: number;
}

/** How long to wait for an operator, and how to stop waiting. */
export interface WaitForApprovalOptions {
  /** Give up after this many seconds with `ApprovalTimeoutError` (default 600). */
  timeoutSeconds?: number;
  /** Stops waiting; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** What `withTask` asks for: the task, plus how long to wait for its approval. */
export interface WithTaskRequest extends TaskRequest {
  /** Give up waiting for approval after this many seconds (default 600). */
  approvalTimeoutSeconds?: number;
  /** Stops waiting for approval. */
  signal?: AbortSignal;
}

/** Options of one mint. */
export interface MintOptions {
  /** A subset of the scopes the task declared for the resource; all of them when unset. */
  scopes?: string[];
  /** The lease's lifetime; the policy's maximum when unset. Never outlives the task. */
  ttlSeconds?: number;
}

/**
 * An agent's client of the jitkey broker: declare a task, wait for approval, mint
 * short-lived credentials for it, complete it.
 *
 * @example
 * ```ts
 * import { JitkeyClient } from "jitkey/client";
 *
 * const client = new JitkeyClient({ broker: "https://jitkey.example.com", identityToken: () => readToken() });
 * const rows = await client.withTask(
 *   { goal: "Summarise open tickets", resources: [{ resource: "reports-api", scopes: ["read"] }] },
 *   async (task) => {
 *     const credential = await task.mint("reports-api", { ttlSeconds: 60 });
 *     return fetchReports(credential.token as string);
 *   },
 * );
 * ```
 */
export class JitkeyClient {
  readonly #http: BrokerTransport;

  constructor(options: JitkeyClientOptions) {
    this.#http = new BrokerTransport({ ...options, token: options.identityToken });
  }

  /** The broker's base URL. */
  get broker(): string {
    return this.#http.baseUrl;
  }

  /**
   * Declares a task. Its `status` is `approved` when a policy rule approves it at once, else
   * `pending`. Never retried once the broker may have received it (that could create two).
   */
  async createTask(request: TaskRequest): Promise<Task> {
    const { task } = await this.#http.send<{ task: Task }>({
      method: "POST",
      path: "/v1/tasks",
      body: request,
      idempotent: false,
    });
    return task;
  }

  /**
   * Reads a task. With `waitSeconds` (at most 60) a broker that supports long polling holds
   * the answer until the task is no longer pending or the time is up.
   */
  getTask(taskId: string, options: { waitSeconds?: number; signal?: AbortSignal } = {}): Promise<Task> {
    return readTask(this.#http, taskId, options);
  }

  /**
   * Waits until the task is approved and returns it.
   *
   * @throws ApprovalDeniedError when an operator denies it.
   * @throws ApprovalTimeoutError when nobody decides within `timeoutSeconds`.
   * @throws TaskClosedError when it ends otherwise (expired, revoked, completed).
   */
  async waitForApproval(task: Task | string, options: WaitForApprovalOptions = {}): Promise<Task> {
    const current = typeof task === "string" ? await this.getTask(task, { signal: options.signal }) : task;
    return waitForTask(current, {
      timeoutSeconds: options.timeoutSeconds ?? 600,
      signal: options.signal,
      poll: (waitSeconds, signal) => this.getTask(current.id, { waitSeconds, signal }),
    });
  }

  /** Mints a credential for an approved task. The secret is in `credential`, returned only this once. */
  async mint(taskId: string, resource: string, options: MintOptions = {}): Promise<MintedLease> {
    return this.#http.send<MintedLease>({
      method: "POST",
      path: `/v1/tasks/${encodeURIComponent(taskId)}/leases`,
      body: { resource, scopes: options.scopes, ttlSeconds: options.ttlSeconds },
      idempotent: false,
    });
  }

  /** Reads a lease (never its secret). */
  getLease(leaseId: string): Promise<Lease> {
    return readLease(this.#http, leaseId);
  }

  /** Releases a lease early: it is revoked now. Releasing twice is harmless. */
  release(leaseId: string): Promise<Lease> {
    return releaseLease(this.#http, leaseId);
  }

  /**
   * Completes a task: every lease of it is revoked. `revoking` counts the leases.
   *
   * @throws TaskClosedError when the task had already ended (also when a retry finds the
   *   completion the lost answer reported).
   */
  complete(taskId: string): Promise<{ task: Task; revoking: number }> {
    return completeTask(this.#http, taskId);
  }

  /**
   * Creates the task, waits for its approval, runs `work`, and completes the task when
   * `work` settles, whatever happens: return, throw, or reject. A task that was never
   * approved (timeout, abort) is completed too, so it leaves no pending request behind.
   *
   * Returns what `work` returns. When `work` fails its error is thrown, never an error from
   * completing the task; when `work` succeeds but completion fails, the completion error is
   * thrown (the leases then end with the task's TTL).
   */
  async withTask<T>(request: WithTaskRequest, work: (task: TaskHandle) => Promise<T> | T): Promise<T> {
    const { approvalTimeoutSeconds, signal, ...taskRequest } = request;
    const created = await this.createTask(taskRequest);
    let outcome: { ok: true; value: T } | { ok: false; error: unknown };
    try {
      const approved = await this.waitForApproval(created, {
        timeoutSeconds: approvalTimeoutSeconds,
        signal,
      });
      outcome = { ok: true, value: await work(new TaskHandle(this, approved)) };
    } catch (error) {
      outcome = { ok: false, error };
    }
    try {
      await this.complete(created.id);
    } catch (completionError) {
      const alreadyEnded = completionError instanceof TaskClosedError;
      if (outcome.ok && !alreadyEnded) throw completionError;
    }
    if (!outcome.ok) throw outcome.error;
    return outcome.value;
  }
}

/** An approved task inside `withTask`: mint and release its credentials. */
export class TaskHandle {
  readonly #client: JitkeyClient;
  readonly #leases: Lease[] = [];

  constructor(
    client: JitkeyClient,
    /** The task as approved. */
    readonly task: Task,
  ) {
    this.#client = client;
  }

  get id(): string {
    return this.task.id;
  }

  /** Leases minted through this handle, in order. */
  get leases(): readonly Lease[] {
    return this.#leases;
  }

  /** Mints a credential for `resource` and returns it (the secret, once). */
  async mint(resource: string, options: MintOptions = {}): Promise<Credential> {
    return (await this.mintLease(resource, options)).credential;
  }

  /** Mints a credential for `resource` and returns it with its lease. */
  async mintLease(resource: string, options: MintOptions = {}): Promise<MintedLease> {
    const minted = await this.#client.mint(this.task.id, resource, options);
    this.#leases.push(minted.lease);
    return minted;
  }

  /** Releases a lease of this task early. */
  async release(leaseId: string): Promise<Lease> {
    return this.#client.release(leaseId);
  }
}
