import { createHash } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import { type JWTPayload, type JWTVerifyGetKey, jwtVerify } from "jose";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import { actorOf, type IntrospectorPrincipal, type OperatorPrincipal } from "../identity/principal.ts";
import type { Metrics } from "../metrics.ts";
import type { RedisKeys } from "../redis.ts";
import { parse } from "../store/record-store.ts";
import type { Task } from "../tasks/task.ts";
import type { Lease } from "./lease.ts";
import type { LeaseStates } from "./lease-states.ts";

/** An RFC 7662 answer. Inactive answers carry nothing else (§2.2). */
export type IntrospectionResult =
  | { active: false }
  | {
      active: true;
      scope: string;
      client_id: string;
      sub: string;
      aud: string | string[];
      iss: string;
      exp: number;
      iat: number;
      nbf?: number;
      jti: string;
      token_type: "Bearer";
      task_id: string;
      resource: string;
    };

/** Why an answer was what it was: the metric label, and the audit reason. */
type Verdict =
  | "active"
  | "invalid_token"
  | "unknown_lease"
  | "lease_not_active"
  | "lease_expired"
  | "task_not_live"
  | "other_resource";

/** How often, at most, a lease's inactive answers are written to the audit trail. */
const INACTIVE_AUDIT_EVERY_MS = 60_000;

/** Verified credentials, by token hash, until they expire: the signature need not be checked twice. */
const VERIFIED_CACHE_SIZE = 10_000;

/**
 * Answers "is this credential still authorised now?" for broker-signed tokens: active only
 * while the signature verifies, the lease is `active` and unexpired, and its task is approved
 * and unexpired — so completion or a force revoke switches it off at once. One Redis read
 * per call (lease and task share a shard). Calls are counted, not audited one by one; the
 * trail records what matters: a lease's first use, and inactive answers (at most once a
 * minute per lease).
 */
export class Introspection {
  readonly #verified = new Map<string, JWTPayload>();

  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      issuer: string;
      /** Every broker's public keys: a credential another broker signed verifies here too. */
      verifyKey: JWTVerifyGetKey;
      states: LeaseStates;
      audit: AuditLog;
      metrics: Metrics;
      clock: Clock;
    },
  ) {}

  async introspect(
    token: string,
    caller: IntrospectorPrincipal | OperatorPrincipal,
  ): Promise<IntrospectionResult> {
    const now = this.deps.clock.now();
    const payload = await this.verify(token, now);
    if (!payload?.jti) return this.answer("invalid_token");
    const shard = this.deps.keys.forId(payload.jti);
    const [leaseRaw, taskRaw] = await this.deps.redis.mget(
      shard.lease(payload.jti),
      typeof payload.task_id === "string" ? shard.task(payload.task_id) : shard.task("-"),
    );
    const lease = parse<Lease>(leaseRaw);
    if (!lease) return this.answer("unknown_lease");
    const task = parse<Task>(taskRaw);
    // A resource server learns nothing about other resources' credentials.
    if (caller.kind === "introspector" && caller.resources && !caller.resources.includes(lease.resource))
      return this.answer("other_resource");
    const verdict: Verdict =
      lease.status !== "active"
        ? "lease_not_active"
        : Date.parse(lease.expiresAt) <= now
          ? "lease_expired"
          : !task ||
              task.id !== lease.taskId ||
              task.status !== "approved" ||
              Date.parse(task.expiresAt) <= now
            ? "task_not_live"
            : "active";
    if (verdict !== "active") {
      await this.auditInactive(lease, caller, verdict, now);
      return this.answer(verdict);
    }
    if (!lease.firstUsedAt) await this.auditFirstUse(lease, caller, now);
    this.deps.metrics.introspections.inc({ result: "active" });
    return {
      active: true,
      scope: lease.scopes.join(" "),
      client_id: lease.agentId,
      sub: payload.sub ?? lease.agentId,
      aud: payload.aud ?? "",
      iss: payload.iss ?? this.deps.issuer,
      exp: payload.exp ?? Math.floor(Date.parse(lease.expiresAt) / 1000),
      iat: payload.iat ?? Math.floor(Date.parse(lease.issuedAt) / 1000),
      ...(payload.nbf !== undefined ? { nbf: payload.nbf } : {}),
      jti: lease.id,
      token_type: "Bearer",
      task_id: lease.taskId,
      resource: lease.resource,
    };
  }

  /** The token's claims if it is a broker-signed token that verifies now. */
  private async verify(token: string, now: number): Promise<JWTPayload | undefined> {
    const hash = createHash("sha256").update(token).digest("base64url");
    const cached = this.#verified.get(hash);
    if (cached) {
      if ((cached.exp ?? 0) * 1000 > now) return cached;
      this.#verified.delete(hash);
    }
    try {
      const { payload } = await jwtVerify(token, this.deps.verifyKey, {
        issuer: this.deps.issuer,
        algorithms: ["ES256", "EdDSA"],
        currentDate: new Date(now),
      });
      if (this.#verified.size >= VERIFIED_CACHE_SIZE) {
        const oldest = this.#verified.keys().next().value;
        if (oldest !== undefined) this.#verified.delete(oldest);
      }
      this.#verified.set(hash, payload);
      return payload;
    } catch {
      return undefined;
    }
  }

  private answer(verdict: Exclude<Verdict, "active">): { active: false } {
    this.deps.metrics.introspections.inc({ result: verdict });
    return { active: false };
  }

  private async auditFirstUse(lease: Lease, caller: IntrospectorPrincipal | OperatorPrincipal, now: number) {
    const write = this.deps.states.firstUse(lease, new Date(now).toISOString());
    this.deps.audit.add(write, this.event(lease, caller, "allow", "first use"));
    await this.deps.audit.apply(write);
  }

  private async auditInactive(
    lease: Lease,
    caller: IntrospectorPrincipal | OperatorPrincipal,
    verdict: Verdict,
    now: number,
  ): Promise<void> {
    const last = lease.inactiveAuditedAt ? Date.parse(lease.inactiveAuditedAt) : 0;
    if (now - last < INACTIVE_AUDIT_EVERY_MS) return;
    const write = this.deps.states.inactiveSeen(lease, new Date(now).toISOString());
    this.deps.audit.add(write, this.event(lease, caller, "deny", verdict));
    await this.deps.audit.apply(write);
  }

  private event(
    lease: Lease,
    caller: IntrospectorPrincipal | OperatorPrincipal,
    decision: "allow" | "deny",
    reason: string,
  ) {
    return {
      type: "introspected" as const,
      actor: actorOf(caller),
      agentId: lease.agentId,
      taskId: lease.taskId,
      leaseId: lease.id,
      resource: lease.resource,
      decision,
      reason,
    };
  }
}
