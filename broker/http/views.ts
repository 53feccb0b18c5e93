import type { Lease } from "../leases/lease.ts";
import type { Task } from "../tasks/task.ts";

const LEASE_VIEW_FIELDS = [
  "id",
  "taskId",
  "agentId",
  "resource",
  "adapter",
  "scopes",
  "issuedAt",
  "expiresAt",
  "status",
  "revocable",
  "revocation",
  "renewedAt",
  "revokeReason",
  "revokeRequestedAt",
  "revokeRequestedBy",
  "revokedAt",
  "revokeFailedAt",
  "lastError",
  "dpopJkt",
  "parentLeaseId",
  "delegationDepth",
  "actors",
  "delegatedBy",
] as const satisfies readonly (keyof Lease)[];

/** What the API shows of a lease: never the tenant or the backend handle, fields in a fixed order. */
export function leaseView(lease: Lease): Partial<Lease> {
  return pick(lease, LEASE_VIEW_FIELDS);
}

/** Copies the named fields that are set, in the order named (Redis scripts reorder JSON keys). */
export function pick<T extends object, K extends keyof T>(record: T, fields: readonly K[]): Partial<T> {
  const out: Partial<T> = {};
  for (const field of fields)
    if (record[field] !== undefined && record[field] !== null) out[field] = record[field];
  return out;
}

const TASK_VIEW_FIELDS = [
  "id",
  "agentId",
  "agentOwner",
  "goal",
  "resources",
  "dataClassification",
  "status",
  "createdAt",
  "expiresAt",
  "approvedAt",
  "approvedBy",
  "approvalsRequired",
  "approvals",
  "requested",
  "deniedAt",
  "deniedBy",
  "note",
  "closedAt",
  "closedBy",
  "closedReason",
] as const satisfies readonly (keyof Task)[];

/** What the API shows of a task, fields in a fixed order. */
export function taskView(task: Task): Partial<Task> {
  return pick(task, TASK_VIEW_FIELDS);
}
