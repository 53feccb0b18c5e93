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

/** Resources, scopes and end of a task: what was asked, or what an approval left of it. */
export interface TaskGrant {
  resources: TaskResource[];
  expiresAt: string;
}

/** One operator's approval of a task. */
export interface TaskApproval {
  /** The operator's name. */
  by: string;
  at: string;
  note?: string;
  /** The grant this approval left, when it narrowed what stood before it. */
  narrowedTo?: TaskGrant;
}

/** An agent's declared goal. Times are ISO 8601 strings. */
export interface Task {
  id: string;
  tenant: string;
  agentId: string;
  /** The accountable owner of the agent's identity (its issuer's `owner`), shown to approvers. */
  agentOwner?: string;
  /**
   * The identity claims the agent presented when it created the task, as far as policy can
   * read them: later decisions on the task (introspection, a policy reload) judge it on these.
   */
  agentClaims?: Record<string, string | number | boolean | readonly string[]>;
  goal: string;
  /** What the task may mint for: as asked, or as an approval narrowed it. */
  resources: TaskResource[];
  dataClassification: Classification;
  status: TaskStatus;
  createdAt: string;
  expiresAt: string;
  approvedAt?: string;
  /** The approval that made the task approved: the last operator's actor name, or the policy rules. */
  approvedBy?: string;
  /** Distinct operators whose approval the task needs (2 when it touches restricted data); absent means 1. */
  approvalsRequired?: number;
  /** Operators' approvals so far, oldest first. */
  approvals?: TaskApproval[];
  /** `approvals.length`, a scalar that writes can guard on (two operators approving at once). */
  approvalCount?: number;
  /** What was asked, kept once an approval narrowed resources, scopes or lifetime. */
  requested?: TaskGrant;
  deniedAt?: string;
  deniedBy?: string;
  note?: string;
  closedAt?: string;
  closedBy?: string;
  /** Why the task ended, when its status does not say it all (`approval_unused`). */
  closedReason?: string;
}
