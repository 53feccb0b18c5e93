import { createHash } from "node:crypto";
import type { IssueRequest } from "../types.ts";

/**
 * How a jitkey lease shows in AWS: the role session name, the source identity and the session
 * tags that CloudTrail records with every call the credential makes, and that the revocation
 * policy matches on.
 */

/** Session tag keys; `aws:PrincipalTag/<key>` in policies. */
export const TAG = {
  lease: "jitkey-lease",
  task: "jitkey-task",
  /** Set only when the agent id had to be changed to fit SourceIdentity. */
  agent: "jitkey-agent",
} as const;

/** RoleSessionName and SourceIdentity: 2–64 characters of `[\w+=,.@-]` (STS API reference). */
const NAME_CHARS = /^[\w+=,.@-]{2,64}$/;
/** Session tag values: up to 256 characters of `[\p{L}\p{Z}\p{N}_.:/=+\-@]` (STS API reference). */
const TAG_VALUE = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]{0,256}$/u;

function digest(text: string, length: number): string {
  return createHash("sha256").update(text).digest("hex").slice(0, length);
}

/**
 * `text` itself when it is a valid session name / source identity; otherwise, deterministically,
 * the text with every other character replaced by `_`, cut short, and a hash of the whole text
 * appended so two different ids never map to the same name.
 */
export function fitSessionName(text: string): string {
  // "aws:" is reserved for SourceIdentity, but ":" is outside the pattern, so it never passes.
  if (NAME_CHARS.test(text)) return text;
  const suffix = `-${digest(text, 12)}`;
  return text.replace(/[^\w+=,.@-]/g, "_").slice(0, 64 - suffix.length) + suffix;
}

/**
 * A tag value naming `text` exactly: itself when allowed, else `base64url:` and its UTF-8
 * base64url (reversible), else, when even that is too long, `sha256:` and its hash.
 */
export function fitTagValue(text: string): string {
  if (TAG_VALUE.test(text)) return text;
  const encoded = `base64url:${Buffer.from(text, "utf8").toString("base64url")}`;
  return encoded.length <= 256 ? encoded : `sha256:${digest(text, 64)}`;
}

/** Whether a lease or task id can be a session tag value as it is. */
export function isTagValue(text: string): boolean {
  return TAG_VALUE.test(text);
}

/** Everything AssumeRole is told about who the session is for. */
export interface SessionIdentity {
  readonly roleSessionName: string;
  readonly sourceIdentity: string;
  readonly tags: { Key: string; Value: string }[];
}

/** The session name, source identity and tags for one lease. */
export function sessionIdentity(request: IssueRequest): SessionIdentity {
  const sourceIdentity = fitSessionName(request.agentId);
  const tags: { Key: string; Value: string }[] = [
    { Key: TAG.lease, Value: request.leaseId },
    { Key: TAG.task, Value: request.taskId },
  ];
  if (sourceIdentity !== request.agentId) tags.push({ Key: TAG.agent, Value: fitTagValue(request.agentId) });
  return { roleSessionName: fitSessionName(request.leaseId), sourceIdentity, tags };
}
