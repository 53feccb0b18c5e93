import type { Classification } from "../config.ts";

export const TASK_STATUSES = ["pending", "approved", "denied", "completed", "expired", "revoked"] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];

/** Statuses in which a task may still get leases (once approved) or a decision. */
export const LIVE_TASK_STATUSES: readonly TaskStatus[] = ["pending", "approved"];

/** One resource a task declared, with the scopes it asked for and who owns the resource. */
export interface TaskResource {
  resource: string;
  scopes: string[];
  owner?: string;
}

/** An agent's declared goal. Times are ISO 8601 strings. */
export interface Task {
  id: string;
  tenant: string;
  agentId: string;
  /** The accountable owner of the agent's identity (its issuer's `owner`), shown to approvers. */
  agentOwner?: string;
  goal: string;
  resources: TaskResource[];
  dataClassification: Classification;
  status: TaskStatus;
  createdAt: string;
  expiresAt: string;
  approvedAt?: string;
  approvedBy?: string;
  deniedAt?: string;
  deniedBy?: string;
  note?: string;
  closedAt?: string;
  closedBy?: string;
}
