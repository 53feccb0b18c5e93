import { type Job, UnrecoverableError, Worker } from "bullmq";
import type { Redis } from "ioredis";
import type { Logger } from "winston";
import { AdapterError } from "../adapters/types.ts";
import type { LeaseService } from "../broker/leases/lease-service.ts";
import type { TaskService } from "../broker/tasks/task-service.ts";
import { type JobName, type JobPayloads, REVOCATION_QUEUE } from "./queues.ts";
import type { Reconciler } from "./reconciler.ts";

export interface RevocationWorkerOptions {
  concurrency: number;
  /** How long a job's lock lasts before another worker may take a stalled job over. */
  lockDurationMs?: number;
  stalledIntervalMs?: number;
}

/**
 * Runs the revocation path: lease revocations (at expiry or on request), task expiry and the
 * reconciler. Permanent adapter failures are marked unrecoverable so BullMQ does not retry.
 */
export function startRevocationWorker(
  deps: {
    connection: Redis;
    prefix: string;
    leases: LeaseService;
    tasks: TaskService;
    reconciler: Reconciler;
    logger: Logger;
  },
  options: RevocationWorkerOptions,
): Worker {
  const process = async (job: Job): Promise<unknown> => {
    const name = job.name as JobName;
    switch (name) {
      case "revoke-lease": {
        const data = job.data as JobPayloads["revoke-lease"];
        const final = job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
        try {
          return await deps.leases.revokeFromJob(data.leaseId, { expiry: data.expiry ?? false, final });
        } catch (error) {
          if (error instanceof AdapterError && error.permanent) throw new UnrecoverableError(error.message);
          throw error;
        }
      }
      case "expire-task":
        return deps.tasks.expireIfDue((job.data as JobPayloads["expire-task"]).taskId);
      case "reconcile":
        return deps.reconciler.run();
      default:
        throw new UnrecoverableError(`unknown job ${job.name}`);
    }
  };
  const worker = new Worker(REVOCATION_QUEUE, process, {
    connection: deps.connection,
    prefix: deps.prefix,
    concurrency: options.concurrency,
    lockDuration: options.lockDurationMs ?? 30_000,
    stalledInterval: options.stalledIntervalMs ?? 30_000,
    maxStalledCount: 5,
  });
  worker.on("failed", (job, error) => {
    deps.logger.warn("revocation job failed", {
      job: job?.name,
      jobId: job?.id,
      attemptsMade: job?.attemptsMade,
      error: error.message,
    });
  });
  worker.on("error", (error) => deps.logger.error("revocation worker error", { error: error.message }));
  return worker;
}
