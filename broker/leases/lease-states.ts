import type { RedisKeys, ShardKeys } from "../redis.ts";
import { AtomicWrite, type BatchPatch } from "../store/atomic-write.ts";
import type { Lease, LeaseStatus, RevokeReason } from "./lease.ts";

/** Who took a lease's attempt at the adapter (a revocation job's id), and when. */
export interface RevokeAttempt {
  at: string;
  by?: string;
}

/** Who asked for a revocation, when, and why. */
interface RevocationRequestFields {
  reason: RevokeReason;
  requestedAt: string;
  requestedBy: string;
}

/** The fields of an attempt under way, cleared when it ends without settling the lease. */
const ATTEMPT_FIELDS = ["revokeAttemptAt", "revokeAttemptBy"];

/**
 * The lease state machine, in one place: which status may move to which, and the index
 * writes that go with each move. Every function returns an {@link AtomicWrite} (guarded on the
 * lease's current status) for the caller to add audit events to and apply.
 *
 * ```
 * issuing ──activate──▶ active
 *    │                    │
 *    └──────┬─────────────┘
 *           ▼ startRevocation                         settle
 *       revoking ──(attempt fails: retryLater)──▶ revoking ──────▶ revoked
 *           │                                                        ▲
 *           └──markFailed──▶ revoke_failed ──startRevocation (new round)┘
 * ```
 * Leases whose adapter keeps nothing to delete (broker-signed tokens) may go straight from
 * any live status to `revoked` (`settleDirect`). While `revoking`, a job goes to the adapter
 * only after taking the attempt (`takeAttempt`, or `startRevocation` with an attempt), so two
 * live jobs never revoke one lease at once.
 *
 * Indexes: `live` holds issuing/active leases by when to look next (expiry, or a mint gone
 * stale), `revoking` holds leases under revocation by when to look again, `failed` holds
 * revoke_failed leases by their next retry. A lease is in exactly one of them until revoked.
 */
export class LeaseStates {
  constructor(
    private readonly keys: RedisKeys,
    private readonly timing: {
      /** How long an issuing or revoking lease may stall before someone looks again. */
      staleMs: number;
      /** How long a revoked lease record is kept. */
      retentionSeconds: number;
    },
  ) {}

  shardOf(leaseId: string): ShardKeys {
    return this.keys.forId(leaseId);
  }

  /**
   * Writes a new `issuing` lease with its indexes, only while its task is approved, unexpired
   * and the agent's: so a mint racing with a completion either lands before it (and is
   * revoked by it) or is refused.
   */
  issue(lease: Lease, nowIso: string): AtomicWrite {
    const shard = this.shardOf(lease.id);
    const issuedMs = Date.parse(lease.issuedAt);
    const lookAt = Math.min(Date.parse(lease.expiresAt), issuedMs + this.timing.staleMs);
    return new AtomicWrite(shard)
      .guard(shard.task(lease.taskId), ["approved"], {
        equals: { agentId: lease.agentId },
        laterThan: { expiresAt: nowIso },
      })
      .create(shard.lease(lease.id), lease)
      .zadd(shard.liveLeases, lookAt, lease.id)
      .zadd(shard.taskLeases(lease.taskId), issuedMs, lease.id)
      .zadd(shard.resourceLeases(lease.resource), issuedMs, lease.id)
      .zadd(shard.allLeases, issuedMs, lease.id);
  }

  /**
   * Writes a new `issuing` lease delegated from `parent` (token exchange), only while the task
   * is approved and unexpired and the parent is `active` and unexpired; the child joins the
   * parent's children index, which revocation walks. A parent revoked before this write gets
   * no child; one revoked after it finds the child in the index. Guard 0 is the task, 1 the parent.
   */
  issueChild(lease: Lease, parent: Lease, nowIso: string): AtomicWrite {
    const shard = this.shardOf(lease.id);
    if (this.shardOf(parent.id) !== shard) throw new Error("a delegated lease lives in its parent's shard");
    const children = shard.leaseChildren(parent.id);
    const keepSeconds =
      (Date.parse(parent.expiresAt) - Date.parse(nowIso)) / 1000 + this.timing.retentionSeconds;
    return this.issue(lease, nowIso)
      .guard(shard.lease(parent.id), ["active"], { laterThan: { expiresAt: nowIso } })
      .zadd(children, Date.parse(lease.issuedAt), lease.id)
      .expire(children, keepSeconds);
  }

  /**
   * A new lease written already `active`, with its indexes, handle and due time, for adapters
   * whose credential is worthless without it (`capabilities.issuesLocally`): guarded like
   * {@link issue} on the task being approved, unexpired and the agent's.
   */
  issueActive(
    lease: Lease,
    issued: { expiresAt: string; handle?: string; references?: Record<string, string> },
    nowIso: string,
  ): AtomicWrite {
    const active: Lease = { ...lease, ...issued, status: "active" };
    if (!active.handle) delete active.handle;
    if (!active.references) delete active.references;
    const shard = this.shardOf(lease.id);
    const issuedMs = Date.parse(lease.issuedAt);
    const write = new AtomicWrite(shard)
      .guard(shard.task(lease.taskId), ["approved"], {
        equals: { agentId: lease.agentId },
        laterThan: { expiresAt: nowIso },
      })
      .create(shard.lease(lease.id), active)
      .zadd(shard.liveLeases, Date.parse(issued.expiresAt), lease.id)
      .zadd(shard.taskLeases(lease.taskId), issuedMs, lease.id)
      .zadd(shard.resourceLeases(lease.resource), issuedMs, lease.id)
      .zadd(shard.allLeases, issuedMs, lease.id);
    if (issued.handle) write.hset(shard.handles(lease.resource), issued.handle, lease.id);
    return write;
  }

  /** issuing → active, only while the task is still approved and unexpired. */
  activate(
    lease: Lease,
    issued: { expiresAt: string; handle?: string; references?: Record<string, string> },
    nowIso: string,
  ): AtomicWrite {
    const shard = this.shardOf(lease.id);
    const write = new AtomicWrite(shard)
      .guard(shard.lease(lease.id), ["issuing"])
      .guard(shard.task(lease.taskId), ["approved"], { laterThan: { expiresAt: nowIso } })
      .patch({ status: "active", ...issued })
      .zadd(shard.liveLeases, Date.parse(issued.expiresAt), lease.id);
    if (issued.handle) write.hset(shard.handles(lease.resource), issued.handle, lease.id);
    return write;
  }

  /**
   * active → active with a later end (a renewal), only while its task is approved and lasts
   * at least that long, and only if nobody changed the lease's end meanwhile.
   */
  extend(lease: Lease, expiresAt: string, nowIso: string): AtomicWrite {
    const shard = this.shardOf(lease.id);
    return new AtomicWrite(shard)
      .guard(shard.lease(lease.id), ["active"], { equals: { expiresAt: lease.expiresAt } })
      .guard(shard.task(lease.taskId), ["approved"], { laterThan: { expiresAt: nowIso } })
      .patch({ expiresAt, renewedAt: nowIso })
      .zadd(shard.liveLeases, Date.parse(expiresAt), lease.id);
  }

  /** A lease looked at before it is due goes back to the live index at the right time. */
  reschedule(lease: Lease, lookAtMs: number): AtomicWrite {
    const shard = this.shardOf(lease.id);
    return new AtomicWrite(shard)
      .guard(shard.lease(lease.id), ["issuing", "active"])
      .zrem(shard.revokingLeases, lease.id)
      .zadd(shard.liveLeases, lookAtMs, lease.id);
  }

  /**
   * Starts a revocation round: `from` → revoking. A retry after revoke_failed keeps who
   * asked, when and why. `lookAgainAtMs` is when to look again if nobody settles it.
   */
  startRevocation(
    lease: Lease,
    request: { reason: RevokeReason; requestedAt: string; requestedBy: string },
    lookAgainAtMs: number,
    /** Set when the caller goes on to the adapter itself: the first attempt is taken in the same write. */
    attempt?: RevokeAttempt,
  ): AtomicWrite {
    const shard = this.shardOf(lease.id);
    const retry = lease.status === "revoke_failed";
    return this.guarded(lease, [lease.status])
      .patch(
        {
          status: "revoking",
          revokeReason: retry ? (lease.revokeReason ?? request.reason) : request.reason,
          revokeRequestedAt: retry ? (lease.revokeRequestedAt ?? request.requestedAt) : request.requestedAt,
          revokeRequestedBy: retry ? (lease.revokeRequestedBy ?? request.requestedBy) : request.requestedBy,
          revokeRound: (lease.revokeRound ?? 0) + 1,
          revokeAttempts: 0,
          ...(attempt ? { revokeAttemptAt: attempt.at, revokeAttemptBy: attempt.by } : {}),
        },
        attempt ? {} : { unset: ATTEMPT_FIELDS },
      )
      .zrem(shard.liveLeases, lease.id)
      .zrem(shard.failedLeases, lease.id)
      .zadd(shard.revokingLeases, lookAgainAtMs, lease.id);
  }

  /**
   * Takes the next attempt of the current round for one job, only if no other job took it since
   * `lease` was read (compare-and-set on `revokeAttemptAt`). If that job goes silent, the lease
   * is looked at again at `lookAgainAtMs`.
   */
  takeAttempt(lease: Lease, attempt: RevokeAttempt, lookAgainAtMs: number): AtomicWrite {
    const shard = this.shardOf(lease.id);
    return new AtomicWrite(shard)
      .guard(shard.lease(lease.id), ["revoking"], {
        equals: { revokeRound: lease.revokeRound ?? null, revokeAttemptAt: lease.revokeAttemptAt ?? null },
      })
      .patch({ revokeAttemptAt: attempt.at, revokeAttemptBy: attempt.by })
      .zadd(shard.revokingLeases, lookAgainAtMs, lease.id);
  }

  /** A failed attempt of the current round: try again at `retryAtMs`. */
  retryLater(lease: Lease, attempts: number, retryAtMs: number): AtomicWrite {
    const shard = this.shardOf(lease.id);
    return this.guarded(lease, ["revoking"], true)
      .patch({ revokeAttempts: attempts }, { unset: ATTEMPT_FIELDS })
      .zadd(shard.revokingLeases, retryAtMs, lease.id);
  }

  /** The current round gave up: revoke_failed, retried from `retryAtMs`. */
  markFailed(lease: Lease, failure: { at: string; error: string }, retryAtMs: number): AtomicWrite {
    const shard = this.shardOf(lease.id);
    return this.guarded(lease, ["revoking"], true)
      .patch(
        { status: "revoke_failed", revokeFailedAt: failure.at, lastError: failure.error },
        { unset: ATTEMPT_FIELDS },
      )
      .zrem(shard.revokingLeases, lease.id)
      .zadd(shard.failedLeases, retryAtMs, lease.id);
  }

  /** The adapter confirmed the revocation of the current round: revoked, kept for retention. */
  settle(lease: Lease, revokedAt: string): AtomicWrite {
    return this.finish(
      this.guarded(lease, ["revoking"], true).patch(
        { status: "revoked", revokedAt },
        { expiry: { seconds: this.timing.retentionSeconds } },
      ),
      lease,
    );
  }

  /**
   * Straight to revoked, for leases whose adapter has nothing to delete (revocation works
   * through introspection): one write however many leases a task had.
   */
  settleDirect(lease: Lease, request: RevocationRequestFields, revokedAt: string): AtomicWrite {
    return this.finish(
      this.guarded(lease, [lease.status], lease.status === "revoking").patch(
        this.directFields(lease, request, revokedAt),
        { expiry: { seconds: this.timing.retentionSeconds } },
      ),
      lease,
    );
  }

  /**
   * {@link settleDirect} as a patch of the fixed shape many settle in one call (an expiry
   * storm, a task's fan-out): for an issuing or active lease with no handle, the case of
   * nearly every lease settled that way; undefined for the rest, which take the general write.
   * The same guard, fields, expiry and index removals as {@link settleDirect}.
   */
  settleDirectPatch(
    lease: Lease,
    request: RevocationRequestFields,
    revokedAt: string,
  ): Omit<BatchPatch, "event"> | undefined {
    if ((lease.status !== "issuing" && lease.status !== "active") || lease.handle) return undefined;
    const shard = this.shardOf(lease.id);
    return {
      shard,
      key: shard.lease(lease.id),
      status: lease.status,
      fields: this.directFields(lease, request, revokedAt),
      expirySeconds: this.timing.retentionSeconds,
      member: lease.id,
      removeFrom: [shard.revokingLeases, shard.liveLeases],
    };
  }

  /** What a direct settle sets: revoked, and the revocation's who, when and why (kept from an ongoing round). */
  private directFields(lease: Lease, request: RevocationRequestFields, revokedAt: string) {
    const keep = lease.status === "revoking" || lease.status === "revoke_failed";
    return {
      status: "revoked",
      revokedAt,
      revokeReason: keep ? (lease.revokeReason ?? request.reason) : request.reason,
      revokeRequestedAt: keep ? (lease.revokeRequestedAt ?? request.requestedAt) : request.requestedAt,
      revokeRequestedBy: keep ? (lease.revokeRequestedBy ?? request.requestedBy) : request.requestedBy,
    };
  }

  /**
   * A credential that arrived after its lease left `issuing`, whose inline revocation failed:
   * the lease is live again in a new round, with the handle, as revoke_failed — retried
   * from `retryAtMs` until it is gone.
   */
  reopenFailed(
    lease: Lease,
    issued: { handle?: string; references?: Record<string, string> },
    failure: { at: string; error: string },
    retryAtMs: number,
  ): AtomicWrite {
    const shard = this.shardOf(lease.id);
    const write = this.guarded(lease, [lease.status], true)
      .patch(
        {
          status: "revoke_failed",
          handle: issued.handle,
          references: issued.references,
          revokeRound: (lease.revokeRound ?? 0) + 1,
          revokeReason: lease.revokeReason ?? "issue_failed",
          revokeRequestedAt: lease.revokeRequestedAt ?? failure.at,
          revokeRequestedBy: lease.revokeRequestedBy ?? "system",
          revokeFailedAt: failure.at,
          lastError: failure.error,
        },
        { unset: ["revokedAt"], expiry: "persist" },
      )
      .zrem(shard.liveLeases, lease.id)
      .zrem(shard.revokingLeases, lease.id)
      .zadd(shard.failedLeases, retryAtMs, lease.id);
    if (issued.handle) write.hset(shard.handles(lease.resource), issued.handle, lease.id);
    return write;
  }

  /** A revoked or vanished lease must be in no index that says someone still has to act. */
  untrack(leaseId: string, handle?: { resource: string; handle: string }): AtomicWrite {
    const shard = this.shardOf(leaseId);
    const write = new AtomicWrite(shard)
      .zrem(shard.liveLeases, leaseId)
      .zrem(shard.revokingLeases, leaseId)
      .zrem(shard.failedLeases, leaseId);
    if (handle) write.hdel(shard.handles(handle.resource), handle.handle);
    return write;
  }

  /** Marks a lease's first use by a resource server, once. */
  firstUse(lease: Lease, at: string): AtomicWrite {
    const shard = this.shardOf(lease.id);
    return new AtomicWrite(shard)
      .guard(shard.lease(lease.id), ["active"], { equals: { firstUsedAt: null } })
      .patch({ firstUsedAt: at });
  }

  /** Notes that an inactive answer about the lease was audited (compare-and-set: one broker writes it). */
  inactiveSeen(lease: Lease, at: string): AtomicWrite {
    const shard = this.shardOf(lease.id);
    return new AtomicWrite(shard)
      .guard(shard.lease(lease.id), [lease.status], {
        equals: { inactiveAuditedAt: lease.inactiveAuditedAt ?? null },
      })
      .patch({ inactiveAuditedAt: at });
  }

  private guarded(lease: Lease, statuses: readonly LeaseStatus[], sameRound = false): AtomicWrite {
    const shard = this.shardOf(lease.id);
    // Only the current round may move a lease under revocation: an older job must not settle a newer round.
    return new AtomicWrite(shard).guard(
      shard.lease(lease.id),
      statuses,
      sameRound ? { equals: { revokeRound: lease.revokeRound ?? null } } : {},
    );
  }

  /**
   * Takes a settled lease out of the due index it can be in, as its guarded status says: the
   * revoking index (a sweeper's claim moves a due lease there whatever its status), and the
   * live one for an issuing or active lease, the failed one for a revoke_failed lease.
   */
  private finish(write: AtomicWrite, lease: Lease): AtomicWrite {
    const shard = write.shard;
    write.zrem(shard.revokingLeases, lease.id);
    if (lease.status === "issuing" || lease.status === "active") write.zrem(shard.liveLeases, lease.id);
    if (lease.status === "revoke_failed") write.zrem(shard.failedLeases, lease.id);
    if (lease.handle) write.hdel(shard.handles(lease.resource), lease.handle);
    return write;
  }
}
