import { UnrecoverableError, Worker } from "bullmq";
import type { Cluster, Redis } from "ioredis";
import type { AuditSealer } from "../broker/audit/audit-seal.ts";
import type { LeaseRevoker } from "../broker/leases/lease-revoker.ts";
import type { Logger } from "../broker/logger.ts";
import type { TaskService } from "../broker/tasks/task-service.ts";
import { isJob, type JobData, type JobName, REVOCATION_QUEUE, type RevocationJob } from "./queues.ts";
import type { Reconciler } from "./reconciler.ts";

export interface RevocationWorkerOptions {
  concurrency: number;
  /** How long a job's lock lasts before another worker may take a stalled job over. */
  lockDurationMs?: number;
  stalledIntervalMs?: number;
}

/**
 * Runs the revocation path: settling due leases (revocation through the adapters, with
 * retries scheduled in the due indexes), task expiry and the reconciler.
 */
export function startRevocationWorker(
  deps: {
    connection: Redis | Cluster;
    prefix: string;
    revoker: LeaseRevoker;
    tasks: TaskService;
    reconciler: Reconciler;
    sealer: Pick<AuditSealer, "sealAll">;
    logger: Logger;
  },
  options: RevocationWorkerOptions,
): Worker<JobData, unknown, JobName> {
  const process = async (job: RevocationJob): Promise<unknown> => {
    if (isJob(job, "settle-leases")) return deps.revoker.settle(job.data.leaseIds, job.id);
    if (isJob(job, "expire-tasks")) {
      let expired = 0;
      for (const taskId of job.data.taskIds) if (await deps.tasks.expireIfDue(taskId)) expired += 1;
      return { expired };
    }
    if (isJob(job, "reconcile")) return deps.reconciler.run();
    if (isJob(job, "seal-audit")) return { sealed: await deps.sealer.sealAll() };
    throw new UnrecoverableError(`unknown job ${job.name}`);
  };
  const worker = new Worker<JobData, unknown, JobName>(REVOCATION_QUEUE, process, {
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
