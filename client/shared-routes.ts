import type { BrokerTransport } from "./transport.ts";
import type { Lease, Task } from "./types.ts";

/** Routes agents and operators both call; each client wraps them with its own principal's token. */

/** `GET /v1/tasks/:id`, held up to `waitSeconds` by a broker that long-polls. */
export async function readTask(
  http: BrokerTransport,
  taskId: string,
  options: { waitSeconds?: number; signal?: AbortSignal } = {},
): Promise<Task> {
  const { task } = await http.send<{ task: Task }>({
    method: "GET",
    path: `/v1/tasks/${encodeURIComponent(taskId)}`,
    query: { waitSeconds: options.waitSeconds },
    holdSeconds: options.waitSeconds,
    signal: options.signal,
    idempotent: true,
  });
  return task;
}

/** `POST /v1/tasks/:id/complete`: every lease of the task is revoked. */
export function completeTask(
  http: BrokerTransport,
  taskId: string,
): Promise<{ task: Task; revoking: number }> {
  return http.send({
    method: "POST",
    path: `/v1/tasks/${encodeURIComponent(taskId)}/complete`,
    idempotent: true,
  });
}

/** `GET /v1/leases/:id` (never the secret). */
export async function readLease(http: BrokerTransport, leaseId: string): Promise<Lease> {
  const { lease } = await http.send<{ lease: Lease }>({
    method: "GET",
    path: `/v1/leases/${encodeURIComponent(leaseId)}`,
    idempotent: true,
  });
  return lease;
}

/** `DELETE /v1/leases/:id`: the lease is revoked now. */
export async function releaseLease(http: BrokerTransport, leaseId: string): Promise<Lease> {
  const { lease } = await http.send<{ lease: Lease }>({
    method: "DELETE",
    path: `/v1/leases/${encodeURIComponent(leaseId)}`,
    idempotent: true,
  });
  return lease;
}
