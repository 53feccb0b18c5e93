import { type JobsOptions, Queue } from "bullmq";
import type { Redis } from "ioredis";
import type { Config } from "../broker/config.ts";

/** The one queue that carries every revocation-path job. */
export const REVOCATION_QUEUE = "revocation";

/** Job names and their payloads. Payloads carry ids only: never a secret. */
export interface JobPayloads {
  /** Revoke a lease: due at its expiry (`expiry: true`), or at once after a revoke request. */
  "revoke-lease": { leaseId: string; expiry?: boolean };
  /** End a task at its expiry and revoke what it still holds. */
  "expire-task": { taskId: string };
  /** Find and end what a lost job or a crash left behind. */
  reconcile: Record<string, never>;
}
export type JobName = keyof JobPayloads;

/** Deterministic job ids: one expiry job per lease and task, one job per revocation round. */
export const jobIds = {
  leaseExpiry: (leaseId: string) => `lease-expiry-${leaseId}`,
  revokeRound: (leaseId: string, round: number) => `revoke-${leaseId}-r${round}`,
  taskExpiry: (taskId: string) => `task-expiry-${taskId}`,
};

/** Adds revocation-path jobs with their retry policy. */
export class RevocationQueue {
  readonly queue: Queue;
  readonly #retry: JobsOptions;

  constructor(connection: Redis, prefix: string, revocation: Config["revocation"]) {
    this.queue = new Queue(REVOCATION_QUEUE, { connection, prefix });
    this.#retry = {
      attempts: revocation.attempts,
      backoff: { type: "exponential", delay: revocation.backoffMs },
      // Completed ids are freed so a later round can reuse nothing stale; failures stay a week for forensics.
      removeOnComplete: true,
      removeOnFail: { age: 7 * 24 * 3600, count: 10_000 },
    };
  }

  /** Schedules the revocation that ends a lease at its expiry. */
  async scheduleLeaseExpiry(leaseId: string, expiresAt: Date, now: number): Promise<void> {
    await this.add(
      "revoke-lease",
      { leaseId, expiry: true },
      jobIds.leaseExpiry(leaseId),
      Math.max(0, expiresAt.getTime() - now),
    );
  }

  /** Enqueues immediate revocations, one job per lease and round, in one round trip. */
  async revokeNow(leases: { id: string; revokeRound?: number }[]): Promise<void> {
    if (leases.length === 0) return;
    await this.queue.addBulk(
      leases.map((lease) => ({
        name: "revoke-lease",
        data: { leaseId: lease.id } satisfies JobPayloads["revoke-lease"],
        opts: { ...this.#retry, jobId: jobIds.revokeRound(lease.id, lease.revokeRound ?? 1) },
      })),
    );
  }

  /**
   * Enqueues a lease's current revocation round again. A job still queued or retrying absorbs
   * this (same job id); a job that failed for good without settling the lease (it stalled past
   * the limit) would absorb it too, so that one is retried from its first attempt instead.
   * Returns whether anything was (re)queued.
   */
  async requeueRevoke(lease: { id: string; revokeRound?: number }): Promise<boolean> {
    const job = await this.queue.getJob(jobIds.revokeRound(lease.id, lease.revokeRound ?? 1));
    if (job && (await job.isFailed())) {
      // Throws only when the job left `failed` meanwhile: then someone else already moved it.
      await job
        .retry("failed", { resetAttemptsMade: true, resetAttemptsStarted: true })
        .catch(() => undefined);
      return true;
    }
    // Still waiting, delayed for a retry or running: that job settles the lease.
    if (job) return false;
    await this.revokeNow([lease]);
    return true;
  }

  /** Drops a lease's expiry job once the lease was revoked some other way. */
  async cancelLeaseExpiry(leaseId: string): Promise<void> {
    await this.queue.remove(jobIds.leaseExpiry(leaseId)).catch(() => 0);
  }

  async scheduleTaskExpiry(taskId: string, expiresAt: Date, now: number): Promise<void> {
    await this.add(
      "expire-task",
      { taskId },
      jobIds.taskExpiry(taskId),
      Math.max(0, expiresAt.getTime() - now),
    );
  }

  /** Runs the reconciler every `everyMs` on whichever worker picks it up. */
  async scheduleReconciler(everyMs: number): Promise<void> {
    await this.queue.upsertJobScheduler(
      "reconcile",
      { every: everyMs },
      { name: "reconcile", data: {}, opts: { removeOnComplete: true, removeOnFail: 100 } },
    );
  }

  async close(): Promise<void> {
    await this.queue.close();
  }

  private async add<N extends JobName>(
    name: N,
    data: JobPayloads[N],
    jobId: string,
    delay: number,
  ): Promise<void> {
    await this.queue.add(name, data, { ...this.#retry, jobId, delay });
  }
}
