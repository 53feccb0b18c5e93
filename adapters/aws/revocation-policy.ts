/**
 * The inline deny policy that revokes AWS sessions: STS cannot end a session early, but an
 * explicit Deny in the role's own policies applies to every call a session of that role makes.
 *
 * The document holds two kinds of statement, each carrying its own expiry in its Sid so that
 * any process can prune it without other bookkeeping:
 *
 * - `JitkeyRevokedLeasesUntil<epoch s>`: denies sessions whose `jitkey-lease` tag is one of the
 *   listed lease ids. One statement per expiry bucket; once the bucket's end has passed, every
 *   credential in it has expired and the statement goes.
 * - `JitkeyRevokedAllUntil<epoch s>`: the fallback when the lease list no longer fits. Denies
 *   every session of the role issued before a cut-off (`aws:TokenIssueTime`), which revokes the
 *   sessions of live leases too. It goes once every session issued before the cut-off has expired.
 *
 * Statements with other Sids are someone else's and are kept as they are.
 */
import { TAG } from "./session-identity.ts";

/** Width of an expiry bucket: STS's shortest session, so a lease spans at most a few buckets. */
export const BUCKET_SECONDS = 900;
/** STS's shortest session: a credential expiring at E was issued at E − 900 s or earlier. */
const MIN_SESSION_SECONDS = 900;

const LEASES_SID = /^JitkeyRevokedLeasesUntil(\d+)$/;
const ALL_SID = /^JitkeyRevokedAllUntil(\d+)$/;
const LEASE_TAG_KEY = `aws:PrincipalTag/${TAG.lease}`;

/** What the deny policy says, parsed. */
export interface RevocationState {
  /** Bucket end (epoch seconds) → lease ids whose credentials have all expired by then. */
  readonly leases: Map<number, Set<string>>;
  /** Every session issued before `issuedBeforeMs` is denied until `untilSeconds`. */
  all: { issuedBeforeMs: number; untilSeconds: number } | undefined;
  /** Statements this adapter did not write, kept verbatim. */
  readonly others: unknown[];
}

/** Timing the policy needs, all from the broker's clock and the adapter's options. */
export interface RevocationTiming {
  readonly nowMs: number;
  readonly clockSkewSeconds: number;
  readonly maxSessionSeconds: number;
}

interface Statement {
  Sid?: unknown;
  Effect?: unknown;
  Action?: unknown;
  Resource?: unknown;
  Condition?: Record<string, Record<string, unknown>>;
}

function isDenyAll(statement: Statement): boolean {
  const star = (value: unknown) =>
    value === "*" || (Array.isArray(value) && value.length === 1 && value[0] === "*");
  return statement.Effect === "Deny" && star(statement.Action) && star(statement.Resource);
}

function onlyCondition(statement: Statement, operator: string, key: string): unknown {
  const condition = statement.Condition;
  if (!condition || Object.keys(condition).length !== 1) return undefined;
  const block = condition[operator];
  if (!block || Object.keys(block).length !== 1) return undefined;
  return block[key];
}

/** Parses the document `GetRolePolicy` returned (already URL-decoded); undefined = no policy. */
export function parseRevocationPolicy(document: string | undefined): RevocationState {
  const state: RevocationState = { leases: new Map(), all: undefined, others: [] };
  if (document === undefined) return state;
  const parsed = JSON.parse(document) as { Statement?: unknown };
  const statements = Array.isArray(parsed.Statement)
    ? parsed.Statement
    : parsed.Statement
      ? [parsed.Statement]
      : [];
  for (const raw of statements as Statement[]) {
    const sid = typeof raw.Sid === "string" ? raw.Sid : "";
    const leasesMatch = LEASES_SID.exec(sid);
    const allMatch = ALL_SID.exec(sid);
    if (leasesMatch && isDenyAll(raw)) {
      const value = onlyCondition(raw, "StringEquals", LEASE_TAG_KEY);
      const ids = typeof value === "string" ? [value] : Array.isArray(value) ? value : undefined;
      if (ids?.every((id) => typeof id === "string")) {
        const end = Number(leasesMatch[1]);
        const bucket = state.leases.get(end) ?? new Set<string>();
        for (const id of ids) bucket.add(id);
        state.leases.set(end, bucket);
        continue;
      }
    }
    if (allMatch && isDenyAll(raw)) {
      const cutoff = onlyCondition(raw, "DateLessThan", "aws:TokenIssueTime");
      const cutoffMs = typeof cutoff === "string" ? Date.parse(cutoff) : Number.NaN;
      if (Number.isFinite(cutoffMs)) {
        const untilSeconds = Number(allMatch[1]);
        if (!state.all || cutoffMs > state.all.issuedBeforeMs)
          state.all = { issuedBeforeMs: cutoffMs, untilSeconds };
        continue;
      }
    }
    // Not ours, or ours but edited by hand: never drop a Deny we do not understand.
    state.others.push(raw);
  }
  return state;
}

/** The minified document, or undefined when nothing is denied any more. */
export function serialiseRevocationPolicy(state: RevocationState): string | undefined {
  const statements: unknown[] = [];
  if (state.all) {
    statements.push({
      Sid: `JitkeyRevokedAllUntil${state.all.untilSeconds}`,
      Effect: "Deny",
      Action: "*",
      Resource: "*",
      Condition: {
        DateLessThan: { "aws:TokenIssueTime": new Date(state.all.issuedBeforeMs).toISOString() },
      },
    });
  }
  for (const end of [...state.leases.keys()].sort((a, b) => a - b)) {
    const ids = [...(state.leases.get(end) ?? [])].sort();
    if (ids.length === 0) continue;
    statements.push({
      Sid: `JitkeyRevokedLeasesUntil${end}`,
      Effect: "Deny",
      Action: "*",
      Resource: "*",
      Condition: { StringEquals: { [LEASE_TAG_KEY]: ids } },
    });
  }
  statements.push(...state.others);
  if (statements.length === 0) return undefined;
  return JSON.stringify({ Version: "2012-10-17", Statement: statements });
}

/** A policy's size as IAM counts it against the role's quota: white space is not counted. */
export function policySize(document: string): number {
  return document.replace(/\s/g, "").length;
}

/** Drops statements whose sessions have all expired. Returns whether anything changed. */
export function pruneExpired(state: RevocationState, nowMs: number): boolean {
  const nowSeconds = Math.floor(nowMs / 1000);
  let changed = false;
  for (const end of [...state.leases.keys()]) {
    if (end <= nowSeconds) {
      state.leases.delete(end);
      changed = true;
    }
  }
  if (state.all && state.all.untilSeconds <= nowSeconds) {
    state.all = undefined;
    changed = true;
  }
  return changed;
}

/**
 * Adds a deny entry for `leaseId`, whose credential expires at `credentialExpiresAtMs` (by
 * AWS's clock, or an upper bound). Returns whether the document changed: not when an entry
 * that lasts long enough is already there, or the all-sessions cut-off already covers it.
 */
export function addRevokedLease(
  state: RevocationState,
  leaseId: string,
  credentialExpiresAtMs: number,
  timing: RevocationTiming,
): boolean {
  // STS sessions last at least 900 s, so this credential was issued by E − 900 s at the latest.
  if (state.all && credentialExpiresAtMs - MIN_SESSION_SECONDS * 1000 < state.all.issuedBeforeMs)
    return false;
  const needed =
    Math.ceil((credentialExpiresAtMs / 1000 + timing.clockSkewSeconds) / BUCKET_SECONDS) * BUCKET_SECONDS;
  let longest = 0;
  for (const [end, ids] of state.leases) if (ids.has(leaseId)) longest = Math.max(longest, end);
  if (longest >= needed) return false;
  for (const ids of state.leases.values()) ids.delete(leaseId);
  const bucket = state.leases.get(needed) ?? new Set<string>();
  bucket.add(leaseId);
  state.leases.set(needed, bucket);
  return true;
}

/**
 * The fallback: replaces every lease entry by one statement denying all sessions of the role
 * issued before now (plus the clock-skew allowance). Every revoked lease's session was issued
 * before now, so none is lost; sessions of live leases are revoked too.
 */
export function revokeAllIssuedBefore(state: RevocationState, timing: RevocationTiming): void {
  const cutoffMs = Math.ceil(timing.nowMs / 1000 + timing.clockSkewSeconds) * 1000;
  let untilSeconds = cutoffMs / 1000 + timing.maxSessionSeconds + timing.clockSkewSeconds;
  for (const end of state.leases.keys()) untilSeconds = Math.max(untilSeconds, end);
  if (state.all) untilSeconds = Math.max(untilSeconds, state.all.untilSeconds);
  state.leases.clear();
  state.all = { issuedBeforeMs: Math.max(cutoffMs, state.all?.issuedBeforeMs ?? 0), untilSeconds };
}
