import type { RevocationMode } from "../../adapters/types.ts";

export const LEASE_STATUSES = ["issuing", "active", "revoking", "revoked", "revoke_failed"] as const;
export type LeaseStatus = (typeof LEASE_STATUSES)[number];

export const REVOKE_REASONS = [
  "expired",
  "task_completed",
  "released",
  "operator",
  "policy",
  "issue_failed",
  "parent_revoked",
] as const;
export type RevokeReason = (typeof REVOKE_REASONS)[number];

/**
 * One credential minted for one task from one resource. Holds no secret: `handle` is the
 * adapter's non-secret reference (Vault lease id, token accessor, role name).
 */
export interface Lease {
  id: string;
  tenant: string;
  taskId: string;
  agentId: string;
  resource: string;
  adapter: string;
  scopes: string[];
  issuedAt: string;
  expiresAt: string;
  status: LeaseStatus;
  revocable: boolean;
  revocation: RevocationMode;
  handle?: string;
  /** Further non-secret references from the adapter (see `IssuedCredential.references`). */
  references?: Record<string, string>;
  revokeReason?: RevokeReason;
  revokeRequestedAt?: string;
  revokeRequestedBy?: string;
  /** Counts revocation rounds: only the current round may settle the lease. */
  revokeRound?: number;
  /** Failed attempts in the current round (retried with backoff until `revocation.attempts`). */
  revokeAttempts?: number;
  /**
   * When a job took the attempt now under way to the adapter, and which job: other jobs leave
   * the lease alone until it is `revocation.staleSeconds` old (its worker is then presumed
   * dead); a re-run of the same job takes it over at once (BullMQ re-runs a job only once its
   * worker lost the job's lock).
   */
  revokeAttemptAt?: string;
  revokeAttemptBy?: string;
  /** When the lease was last renewed. */
  renewedAt?: string;
  /** When a resource server first asked about the credential (introspection). */
  firstUsedAt?: string;
  /** When an inactive introspection answer about it was last audited (at most once a minute). */
  inactiveAuditedAt?: string;
  revokedAt?: string;
  revokeFailedAt?: string;
  lastError?: string;
  /** The RFC 7638 thumbprint of the key the credential is bound to (DPoP `cnf.jkt`). */
  dpopJkt?: string;
  /** A delegated lease (token exchange): the lease it was narrowed from. */
  parentLeaseId?: string;
  /** Every lease it descends from, root first, parent last; introspection checks each. */
  ancestorLeaseIds?: string[];
  /** Hops from the root lease: 0 (or absent) for a lease minted directly. */
  delegationDepth?: number;
  /**
   * Who holds a delegated credential and who held it before: the `act` chain, current
   * actor first (RFC 8693 §4.1). The root's holder is `agentId`.
   */
  actors?: string[];
  /** The agent that exchanged the parent for this lease (its `client_id`). */
  delegatedBy?: string;
}

/** The agent that holds a lease's credential: the last actor it was delegated to, or its task's agent. */
export function holderOf(lease: Pick<Lease, "agentId" | "actors">): string {
  return lease.actors?.[0] ?? lease.agentId;
}
