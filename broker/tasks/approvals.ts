import type { Classification, ResourceConfig } from "../config.ts";
import { InvalidRequestError, JitkeyError } from "../errors.ts";
import type { Task, TaskGrant, TaskResource } from "./task.ts";

/** What an operator approves: the task as it stands, or less of it. */
export interface ApprovalRequest {
  note?: string;
  /**
   * The resources and scopes approved, each a subset of what the task holds now; a resource
   * not named is dropped. Absent: everything the task holds.
   */
  resources?: { resource: string; scopes: string[] }[];
  /** The task ends at most this many seconds after this approval (never later than it would). */
  ttlSeconds?: number;
}

/** The grant an approval leaves, and whether it is less than what stood before. */
export interface NarrowedGrant extends TaskGrant {
  narrowed: boolean;
}

/** The same operator approving a task twice: a second approval must come from someone else. */
export class DuplicateApprovalError extends JitkeyError {
  static override readonly code = "duplicate_approval";
  constructor(taskId: string, approvalsRequired: number) {
    super(
      `you already approved task ${taskId}; it needs ${approvalsRequired} approvals from distinct operators`,
      409,
      { approvalsRequired },
    );
  }
}

/** Operators a task must be approved by: two distinct ones when it touches restricted data. */
export function approvalsRequiredFor(
  task: { resources: { resource: string }[]; dataClassification: Classification },
  resources: readonly Pick<ResourceConfig, "name" | "classification">[],
): number {
  const restricted =
    task.dataClassification === "restricted" ||
    task.resources.some(
      ({ resource }) => resources.find((config) => config.name === resource)?.classification === "restricted",
    );
  return restricted ? 2 : 1;
}

/**
 * Applies an approval's narrowing to what a task holds now. Every resource and scope named
 * must already be the task's, so an approval can only take away; the end only moves earlier.
 * Throws `invalid_request` (422) naming the entry that asks for more.
 */
export function narrowGrant(task: Task, request: ApprovalRequest, nowMs: number): NarrowedGrant {
  let resources: TaskResource[] = task.resources;
  if (request.resources) {
    const issues: { path: string; message: string }[] = [];
    request.resources.forEach((entry, i) => {
      const held = task.resources.find((current) => current.resource === entry.resource);
      if (!held) {
        issues.push({
          path: `resources.${i}.resource`,
          message: `${entry.resource} is not part of the task`,
        });
        return;
      }
      const extra = entry.scopes.filter((scope) => !held.scopes.includes(scope));
      if (extra.length > 0)
        issues.push({
          path: `resources.${i}.scopes`,
          message: `${extra.join(", ")} not asked for ${entry.resource}`,
        });
    });
    if (issues.length > 0)
      throw new InvalidRequestError(
        `an approval may only narrow the task: ${issues.map((issue) => issue.message).join("; ")}`,
        { issues },
        422,
      );
    // The task's order and owners are kept; only what the approval names survives.
    resources = task.resources.flatMap((held) => {
      const kept = request.resources?.find((entry) => entry.resource === held.resource);
      if (!kept) return [];
      const scopes = held.scopes.filter((scope) => kept.scopes.includes(scope));
      return [{ ...held, scopes }];
    });
  }
  const currentEnd = Date.parse(task.expiresAt);
  const end =
    request.ttlSeconds === undefined ? currentEnd : Math.min(currentEnd, nowMs + request.ttlSeconds * 1000);
  const narrowed =
    end < currentEnd ||
    resources.length < task.resources.length ||
    resources.some((kept, i) => kept.scopes.length < (task.resources[i]?.scopes.length ?? 0));
  return { resources, expiresAt: new Date(end).toISOString(), narrowed };
}
