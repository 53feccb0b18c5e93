import type { Request } from "express";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import { RateLimitedError } from "../errors.ts";
import { digestOf, type IdentityRejectedError } from "../identity/agent-verifier.ts";
import type { Metrics } from "../metrics.ts";
import type { RedisClient, RedisKeys } from "../redis.ts";
import { countInWindow, type LimitState, type SlidingWindowLimiter } from "./rate-limiter.ts";

/** The longest any string taken from a request may be in an audit event. */
const FIELD_CAP = 200;
const SUMMARY_WINDOW_MS = 60_000;

/** Caps an untrusted string for storage. */
export function capped(value: string, max = FIELD_CAP): string {
  return value.length > max ? `${value.slice(0, max)}…` : value;
}

/** What authentication needs to know of a request, whichever server code received it. */
export interface Caller {
  /** The `Authorization` header. */
  readonly authorization: string | undefined;
  /** The client's address (after `trustProxy`), bounded. */
  readonly address: string;
  /** The route's template, e.g. `POST /v1/tasks/:id/leases`: never the raw URL a client chose. */
  route(): string;
}

/** A caller as Express sees the request. */
export function callerOf(req: Request): Caller {
  return {
    authorization: req.get("authorization"),
    address: capped(req.ip ?? req.socket.remoteAddress ?? "unknown", 64),
    route: () => {
      const path = `${req.baseUrl}${(req.route as { path?: string } | undefined)?.path ?? ""}`;
      return capped(`${req.method} ${path.length > 1 ? path.replace(/\/$/, "") : path}`, 100);
    },
  };
}

/**
 * The failed-authentication limit of one client address. It decides only what happens to
 * credentials that fail: below the limit each
 * rejection is audited (in bounded form) and counted; past it, rejections answer 429 and are
 * only counted — a metric, and one summary event per address and minute — so failures cannot
 * make the broker store more than a few kilobytes per address and minute. A credential that
 * matches is never refused here, whatever its address did before.
 */
export class FailedAuthLimit {
  constructor(
    private readonly deps: {
      limiter: SlidingWindowLimiter;
      redis: RedisClient;
      keys: RedisKeys;
      audit: AuditLog;
      metrics: Metrics;
      clock: Clock;
      perMinute: number;
    },
  ) {}

  /** Where the request's address stands, before this request's failure is counted. */
  standing(caller: Caller): Promise<LimitState> {
    return this.deps.limiter.peek(this.bucket(caller), this.deps.perMinute);
  }

  /**
   * Handles a credential that did not verify, given the address's standing.
   * Always throws: `rate_limited` past the limit, else `rejection` itself.
   */
  async reject(caller: Caller, standing: LimitState, rejection: IdentityRejectedError): Promise<never> {
    const { metrics, audit, limiter, perMinute } = this.deps;
    metrics.identityRejected.inc();
    if (standing.reached) return this.refuse(caller, standing.retryAfterSeconds);
    const after = await limiter.hit(this.bucket(caller), perMinute);
    // The count can pass the limit between reading the standing and this hit (another request,
    // or the window sliding on): such a failure is refused and counted, not recorded one by one.
    if (after.exceeded) return this.refuse(caller, after.retryAfterSeconds);
    await audit.record({
      type: "identity_rejected",
      actor: `ip:${caller.address}`,
      decision: "deny",
      reason: capped(rejection.reason),
      ...(rejection.issuer ? { issuer: capped(rejection.issuer, 64) } : {}),
      ...(rejection.issuerDigest ? { issuerDigest: rejection.issuerDigest } : {}),
      route: caller.route(),
    });
    throw rejection;
  }

  /** A failure past the limit: 429, counted, and summarised once per address and minute. */
  private async refuse(caller: Caller, retryAfterSeconds: number): Promise<never> {
    this.deps.metrics.denials.inc({ decision: "identity", code: "rate_limited" });
    await this.summarise(caller);
    throw new RateLimitedError(retryAfterSeconds);
  }

  private bucket(caller: Caller): string {
    return `auth-fail:${digestOf(caller.address)}`;
  }

  /**
   * The first rejection past the limit in each minute writes one event for the address, with
   * how many were left unrecorded in the minute before; the rest only add to a counter.
   */
  private async summarise(caller: Caller): Promise<void> {
    const { redis, keys, clock, audit } = this.deps;
    const window = Math.floor(clock.now() / SUMMARY_WINDOW_MS);
    const bucket = `{auth-summary:${digestOf(caller.address)}}`;
    const current = keys.rateLimit(bucket, window);
    const { count, previous } = await countInWindow(
      redis,
      current,
      keys.rateLimit(bucket, window - 1),
      SUMMARY_WINDOW_MS * 2,
    );
    if (count !== 1) return;
    await audit.record({
      type: "identity_rejected_summary",
      actor: `ip:${caller.address}`,
      decision: "deny",
      reason:
        "failed-auth limit reached: further rejections from this address this minute are counted, not recorded",
      windowStart: new Date(window * SUMMARY_WINDOW_MS).toISOString(),
      unrecordedLastMinute: previous,
      route: caller.route(),
    });
  }
}
