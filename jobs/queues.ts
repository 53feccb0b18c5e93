import { type Job, type JobsOptions, Queue } from "bullmq";
import type { Cluster, Redis } from "ioredis";
import { isRedisConnectionError } from "../broker/http/redis-health.ts";
import type { Logger } from "../broker/logger.ts";

/** The one queue that carries every revocation-path job. */
export const REVOCATION_QUEUE = "revocation";

/** The most ids one job carries: a task's 10,000 leases are settled by 20 jobs, in parallel. */
export const IDS_PER_JOB = 500;

/** Job names and their payloads. Payloads carry ids only: never a secret. */
export interface JobPayloads {
  /** Revoke (or settle, or tidy) leases that are due: expired, requested, retried or stalled. */
  "settle-leases": { leaseIds: string[] };
  /** End tasks whose time is up and revoke what they hold. */
  "expire-tasks": { taskIds: string[] };
  /** Periodic upkeep: adapter orphan sweeps and retention trims. */
  reconcile: Record<string, never>;
  /** Extends the audit hash chains and signs checkpoints. */
  "seal-audit": Record<string, never>;
}
export type JobName = keyof JobPayloads;
export type JobData = JobPayloads[JobName];
export type RevocationJob = Job<JobData, unknown, JobName>;

/** Narrows a job to one name, typing its payload. */
export function isJob<N extends JobName>(
  job: RevocationJob,
  name: N,
): job is Job<JobPayloads[N], unknown, N> {
  return job.name === name;
}

/**
 * Gives a queue an error listener. Without one BullMQ prints every failed reconnect to stderr
 * as a raw multi-line dump; a lost connection is already reported once per outage (RedisHealth),
 * and a command that fails rejects to its caller, so only other errors are logged here.
 */
export function reportQueueErrors(queue: Queue, logger: Logger | undefined): void {
  queue.on("error", (error: Error) => {
    if (!isRedisConnectionError(error))
      logger?.warn("queue error", { queue: queue.name, error: error.message });
  });
}

/**
 * Adds revocation-path jobs. Retries of a lease's revocation are scheduled through the due
 * indexes (see `jobs/due-sweeper.ts`), so a job's own retries only cover Redis hiccups.
 */
export class RevocationQueue {
  readonly queue: Queue<JobData, unknown, JobName>;
  readonly #options: JobsOptions = {
    attempts: 3,
    backoff: { type: "exponential", delay: 200 },
    removeOnComplete: true,
    // Failures stay a week for forensics; the due indexes retry the work anyway.
    removeOnFail: { age: 7 * 24 * 3600, count: 10_000 },
  };

  constructor(connection: Redis | Cluster, prefix: string, logger?: Logger) {
    this.queue = new Queue<JobData, unknown, JobName>(REVOCATION_QUEUE, { connection, prefix });
    reportQueueErrors(this.queue, logger);
  }

  /** Enqueues the settling of leases, in jobs of at most {@link IDS_PER_JOB}, in one round trip. */
  async settleLeases(leaseIds: readonly string[]): Promise<void> {
    await this.addChunks("settle-leases", leaseIds, (ids) => ({ leaseIds: ids }));
  }

  /** Enqueues the expiry of tasks. */
  async expireTasks(taskIds: readonly string[]): Promise<void> {
    await this.addChunks("expire-tasks", taskIds, (ids) => ({ taskIds: ids }));
  }

  /** Runs the reconciler every `everyMs` on whichever worker picks it up. */
  async scheduleReconciler(everyMs: number): Promise<void> {
    await this.queue.upsertJobScheduler(
      "reconcile",
      { every: everyMs },
      { name: "reconcile", data: {}, opts: { removeOnComplete: true, removeOnFail: 100 } },
    );
  }

  /** Seals the audit trail every `everyMs`: one job at a time, on whichever worker picks it up. */
  async scheduleSealing(everyMs: number): Promise<void> {
    await this.queue.upsertJobScheduler(
      "seal-audit",
      { every: everyMs },
      { name: "seal-audit", data: {}, opts: { removeOnComplete: true, removeOnFail: 100 } },
    );
  }

  async close(): Promise<void> {
    await this.queue.close();
  }

  private async addChunks<N extends "settle-leases" | "expire-tasks">(
    name: N,
    ids: readonly string[],
    payload: (ids: string[]) => JobPayloads[N],
  ): Promise<void> {
    if (ids.length === 0) return;
    const jobs = [];
    for (let at = 0; at < ids.length; at += IDS_PER_JOB)
      jobs.push({ name, data: payload(ids.slice(at, at + IDS_PER_JOB)), opts: this.#options });
    await this.queue.addBulk(jobs);
  }
}
