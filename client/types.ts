/** The shapes the broker's API answers with (API.md). The broker may add fields. */

/** `pending` until approved; every other status but `approved` is final. */
export type TaskStatus = "pending" | "approved" | "denied" | "completed" | "expired" | "revoked";

export type Classification = "public" | "internal" | "confidential" | "restricted";

/** One resource a task asks for, with the scopes it needs. */
export interface TaskResource {
  resource: string;
  scopes: string[];
  /** The accountable owner of the resource, as the broker reports it. */
  owner?: string;
}

/** An agent's declared goal. Times are ISO 8601 strings. */
export interface Task {
  id: string;
  agentId: string;
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
  [field: string]: unknown;
}

export type LeaseStatus = "issuing" | "active" | "revoking" | "revoked" | "revoke_failed";

/** One credential minted for one task. Never holds the secret. */
export interface Lease {
  id: string;
  taskId: string;
  agentId: string;
  resource: string;
  adapter: string;
  scopes: string[];
  issuedAt: string;
  expiresAt: string;
  status: LeaseStatus;
  /** False where the backend cannot revoke early (e.g. GCP access tokens). */
  revocable: boolean;
  revokedAt?: string;
  revokeReason?: string;
  [field: string]: unknown;
}

/**
 * The secret a mint returns, once. Its shape depends on the adapter: `jwt` gives
 * `{type: "bearer", token, expiresAt}`, `postgres` `{type: "postgres", username, password,
 * host, port, database, url, expiresAt}`, `vault` `{type: "vault", data: {...}, expiresAt}`, ...
 */
export interface Credential {
  type: string;
  expiresAt: string;
  [field: string]: unknown;
}

/** A minted lease and its credential. */
export interface MintedLease {
  lease: Lease;
  credential: Credential;
}

/** What a task asks for. */
export interface TaskRequest {
  /** What the agent will do, in words an approver can judge. */
  goal: string;
  resources: { resource: string; scopes: string[] }[];
  /** The highest classification of data the task will touch. */
  dataClassification?: Classification;
  /** The task's lifetime; every lease ends with it. The broker's default applies when unset. */
  ttlSeconds?: number;
}

/** An audit record. Never holds a secret. */
export interface AuditEvent {
  id: string;
  at: string;
  type: string;
  actor: string;
  agentId?: string;
  taskId?: string;
  leaseId?: string;
  decision?: "allow" | "deny";
  reason?: string;
  [field: string]: unknown;
}

/** What one operator revocation hit. */
export interface Revocation {
  id: string;
  /** Leases whose revocation it requested (including those of the tasks it ended). */
  matched: number;
  /** Live tasks it ended. */
  tasksRevoked?: number;
  reason?: string;
  [field: string]: unknown;
}

/** What `GET /v1/audit/verify` answers. */
export type AuditVerification =
  | { ok: true; events: number; checkpoints: number; unsealed: number }
  | { ok: false; brokenAt: string; reason: string; events: number };
