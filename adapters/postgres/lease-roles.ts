import type { IssueRequest } from "../types.ts";

/** PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes; a truncated name would lose the lease id. */
const MAX_IDENTIFIER_BYTES = 63;

/** The per-lease role's name, or undefined when the lease id cannot make a whole identifier. */
export function leaseRoleName(prefix: string, leaseId: string): string | undefined {
  const name = `${prefix}${leaseId}`;
  if (name.includes("\0") || Buffer.byteLength(name, "utf8") > MAX_IDENTIFIER_BYTES) return undefined;
  return name;
}

/**
 * What a per-lease role's COMMENT records: which jitkey resource and lease made it, and when
 * by the broker's clock (the orphan sweep compares it with its own cut-off). Comments on roles
 * are cluster-wide and readable by every user, so only non-secret ids go here.
 */
export interface LeaseRoleComment {
  readonly jitkey: {
    readonly resource: string;
    readonly leaseId: string;
    readonly taskId: string;
    readonly agentId: string;
    readonly createdAt: string;
  };
}

export function leaseRoleComment(request: IssueRequest, createdAt: Date): string {
  const comment: LeaseRoleComment = {
    jitkey: {
      resource: request.resource,
      leaseId: request.leaseId,
      taskId: request.taskId,
      agentId: request.agentId,
      createdAt: createdAt.toISOString(),
    },
  };
  return JSON.stringify(comment);
}

/** The resource and creation time a role's comment records, when it is a jitkey comment. */
export function parseLeaseRoleComment(
  comment: string | null,
): { resource: string; createdAt: Date } | undefined {
  if (!comment) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(comment);
  } catch {
    return undefined;
  }
  const jitkey = (parsed as Partial<LeaseRoleComment> | null)?.jitkey;
  if (typeof jitkey?.resource !== "string" || typeof jitkey.createdAt !== "string") return undefined;
  const createdAt = new Date(jitkey.createdAt);
  if (Number.isNaN(createdAt.getTime())) return undefined;
  return { resource: jitkey.resource, createdAt };
}
