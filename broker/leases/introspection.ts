import { hash } from "node:crypto";
import type { Cluster, Redis } from "ioredis";
import { type JWTPayload, type JWTVerifyGetKey, jwtVerify } from "jose";
import type { AuditLog } from "../audit/audit-log.ts";
import { setBounded } from "../bounded-map.ts";
import type { Clock } from "../clock.ts";
import type { RecordChanges } from "../events/record-changes.ts";
import { actorOf, type IntrospectorPrincipal, type OperatorPrincipal } from "../identity/principal.ts";
import type { Metrics } from "../metrics.ts";
import { type ActClaim, actClaim, type PurposeClaim, purposeOf } from "../oauth/credential-claims.ts";
import type { PolicyCheck, PolicyEngine } from "../policy/policy-engine.ts";
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
      /** `DPoP` when the credential is bound to a key (`cnf`), RFC 9449 §6.2. */
      token_type: "Bearer" | "DPoP";
      task_id: string;
      resource: string;
      /** The task's purpose: the goal's digest and the data classification. */
      purpose: PurposeClaim;
      /** The key the credential is bound to: the presenter must prove it (RFC 9449 §6.2). */
      cnf?: { jkt: string };
      /** Who holds a delegated credential, and who held it before (RFC 8693 §4.1). */
      act?: ActClaim;
    };

/**
 * A record's `expiresAt` in epoch ms, parsed once per record as read: a lease and task held in
 * memory answer thousands of introspections, and `Date.parse` was a measurable part of each.
 */
const expiries = new WeakMap<{ expiresAt: string }, number>();
function expiryOf(record: { expiresAt: string }): number {
  let ms = expiries.get(record);
  if (ms === undefined) {
    ms = Date.parse(record.expiresAt);
    expiries.set(record, ms);
  }
  return ms;
}

/** The one inactive answer (RFC 7662 §2.2: nothing else), and its JSON. */
const INACTIVE: { active: false } = Object.freeze({ active: false });
const INACTIVE_JSON = JSON.stringify(INACTIVE);

/** Why an answer was what it was: the metric label, and the audit reason. */
type Verdict =
  | "active"
  | "invalid_token"
  | "unknown_lease"
  | "lease_not_active"
  | "lease_expired"
  | "task_not_live"
  | "ancestor_not_active"
  | "policy_denied"
  | "other_resource";

/** What the broker knows of a credential now, before deciding what a caller may learn of it. */
export interface CredentialAssessment {
  verdict: Exclude<Verdict, "other_resource" | "policy_denied">;
  /** The verified claims, when the token is a broker-signed credential. */
  payload?: JWTPayload;
  lease?: Lease;
  task?: Task;
}

/** How often, at most, a lease's inactive answers are written to the audit trail. */
const INACTIVE_AUDIT_EVERY_MS = 60_000;

/** Verified credentials, by token digest, until they expire: the signature need not be checked twice. */
const VERIFIED_CACHE_SIZE = 10_000;

/**
 * How long a lease's policy decision is reused: policy is evaluated on introspection, and a
 * resource server asking about one credential many times a second gets one evaluation per
 * second, never one older than a policy reload.
 */
const POLICY_DECISION_MS = 1000;

/**
 * How long a live lease and its task, as read from Redis, answer introspection from memory.
 * Any change to either (from any process) drops them at once (`RecordChanges`); this bounds
 * what a change lost in transit could hide, and an interrupted subscription drops everything.
 */
const VIEW_MS = 1000;

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
  readonly #decisions = new Map<string, { generation: number; until: number; check: PolicyCheck }>();
  /** Live leases with their tasks, by lease id, as last read; and lease ids by task id. */
  readonly #views = new Map<string, { lease: Lease; task: Task; at: number }>();
  readonly #viewsByTask = new Map<string, Set<string>>();
  /**
   * Active answers by the verified claims they were built from, kept while the lease and task
   * records they were built from are the ones held (any change replaces those), with their
   * JSON: a resource server asking about one credential again gets the same answer, built and
   * serialized once.
   */
  readonly #answers = new WeakMap<JWTPayload, { lease: Lease; task: Task; answer: IntrospectionResult }>();
  readonly #json = new WeakMap<IntrospectionResult, string>();

  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      issuer: string;
      /** Every broker's public keys: a credential another broker signed verifies here too. */
      verifyKey: JWTVerifyGetKey;
      states: LeaseStates;
      /** Policy as it is now: a live lease the policy no longer permits is inactive. */
      policy: Pick<PolicyEngine, "stillPermitted" | "generation">;
      /** Which records other processes change, so what is held in memory is dropped at once. */
      changes: Pick<RecordChanges, "subscribe" | "connected" | "epoch">;
      audit: AuditLog;
      metrics: Metrics;
      clock: Clock;
    },
  ) {}

  /** Hears of changed records from the first introspection on: a worker process never needs to. */
  #watching = false;

  async introspect(
    token: string,
    caller: IntrospectorPrincipal | OperatorPrincipal,
  ): Promise<IntrospectionResult> {
    const now = this.deps.clock.now();
    const { verdict, payload, lease, task } = await this.assess(token, now);
    if (!payload || !lease) return this.answer(verdict === "active" ? "unknown_lease" : verdict);
    // A resource server learns nothing about other resources' credentials.
    if (caller.kind === "introspector" && caller.resources && !caller.resources.includes(lease.resource))
      return this.answer("other_resource");
    if (verdict !== "active" || !task) {
      await this.auditInactive(lease, caller, verdict, now);
      return this.answer(verdict === "active" ? "task_not_live" : verdict);
    }
    const permitted = this.permitted(lease, task, now);
    if (!permitted.allowed) {
      await this.auditInactive(lease, caller, "policy_denied", now, permitted);
      return this.answer("policy_denied");
    }
    if (!lease.firstUsedAt) await this.auditFirstUse(lease, caller, now);
    this.deps.metrics.introspections.inc({ result: "active" });
    const held = this.#answers.get(payload);
    if (held && held.lease === lease && held.task === task) return held.answer;
    const act = actClaim(lease.actors);
    const answer: IntrospectionResult = {
      active: true,
      scope: lease.scopes.join(" "),
      client_id: lease.delegatedBy ?? lease.agentId,
      sub: payload.sub ?? lease.agentId,
      aud: payload.aud ?? "",
      iss: payload.iss ?? this.deps.issuer,
      exp: payload.exp ?? Math.floor(Date.parse(lease.expiresAt) / 1000),
      iat: payload.iat ?? Math.floor(Date.parse(lease.issuedAt) / 1000),
      ...(payload.nbf !== undefined ? { nbf: payload.nbf } : {}),
      jti: lease.id,
      token_type: lease.dpopJkt ? "DPoP" : "Bearer",
      task_id: lease.taskId,
      resource: lease.resource,
      purpose: purposeOf(task),
      ...(lease.dpopJkt ? { cnf: { jkt: lease.dpopJkt } } : {}),
      ...(act ? { act } : {}),
    };
    // Shared by every caller asking about this credential: nobody may change it.
    Object.freeze(answer);
    this.#answers.set(payload, { lease, task, answer });
    return answer;
  }

  /** An answer of {@link introspect} as JSON; an answer given before is serialized once. */
  json(answer: IntrospectionResult): string {
    if (answer === INACTIVE) return INACTIVE_JSON;
    let json = this.#json.get(answer);
    if (json === undefined) {
      json = JSON.stringify(answer);
      this.#json.set(answer, json);
    }
    return json;
  }

  /**
   * Whether a credential is live now: it verifies, its lease is `active` and unexpired, its
   * task `approved` and unexpired, and — for a delegated credential — every lease it descends
   * from is `active` and unexpired, so revoking a parent switches off every descendant at once.
   * One Redis read, two for a delegated credential (all in the task's shard).
   */
  async assess(token: string, now: number): Promise<CredentialAssessment> {
    if (!this.#watching) {
      this.#watching = true;
      this.deps.changes.subscribe((key) => this.forget(key));
    }
    const payload = await this.verify(token, now);
    if (!payload?.jti) return { verdict: "invalid_token" };
    const shard = this.deps.keys.forId(payload.jti);
    let { lease, task } = this.view(payload.jti) ?? {};
    if (!lease) {
      // Held only if no change message can have been missed while the read was out.
      const epoch = this.deps.changes.connected ? this.deps.changes.epoch : undefined;
      const [leaseRaw, taskRaw] = await this.deps.redis.mget(
        shard.lease(payload.jti),
        typeof payload.task_id === "string" ? shard.task(payload.task_id) : shard.task("-"),
      );
      lease = parse<Lease>(leaseRaw);
      task = parse<Task>(taskRaw);
      if (lease && task && epoch === this.deps.changes.epoch) this.remember(lease, task);
    }
    if (!lease) return { verdict: "unknown_lease", payload };
    let verdict: CredentialAssessment["verdict"] =
      lease.status !== "active"
        ? "lease_not_active"
        : expiryOf(lease) <= now
          ? "lease_expired"
          : !task || task.id !== lease.taskId || task.status !== "approved" || expiryOf(task) <= now
            ? "task_not_live"
            : "active";
    const ancestors = lease.ancestorLeaseIds ?? [];
    if (verdict === "active" && ancestors.length > 0) {
      const raws = await this.deps.redis.mget(ancestors.map((id) => shard.lease(id)));
      const allLive = raws.every((raw) => {
        const ancestor = parse<Lease>(raw);
        return ancestor?.status === "active" && Date.parse(ancestor.expiresAt) > now;
      });
      if (!allLive) verdict = "ancestor_not_active";
    }
    return { verdict, payload, lease, task };
  }

  /** A live lease and its task held in memory, while nothing says they changed. */
  private view(leaseId: string): { lease: Lease; task: Task } | undefined {
    const held = this.#views.get(leaseId);
    if (!held) return undefined;
    if (this.deps.changes.connected && performance.now() - held.at < VIEW_MS) return held;
    this.forgetLease(leaseId);
    return undefined;
  }

  /** Holds an active, undelegated lease and its approved task (what most introspections ask about). */
  private remember(lease: Lease, task: Task): void {
    if (lease.status !== "active" || task.status !== "approved" || (lease.ancestorLeaseIds?.length ?? 0) > 0)
      return;
    if (!this.deps.changes.connected) return;
    if (this.#views.size >= VERIFIED_CACHE_SIZE) {
      const oldest = this.#views.keys().next().value;
      if (oldest !== undefined) this.forgetLease(oldest);
    }
    this.#views.set(lease.id, { lease, task, at: performance.now() });
    const leases = this.#viewsByTask.get(task.id) ?? new Set<string>();
    leases.add(lease.id);
    this.#viewsByTask.set(task.id, leases);
  }

  /** A record changed somewhere (or changes may have been missed: `undefined`). */
  private forget(key: string | undefined): void {
    if (key === undefined) {
      this.#views.clear();
      this.#viewsByTask.clear();
      return;
    }
    const match = /:(lease|task):([^:]+)$/.exec(key);
    if (match?.[1] === "lease") this.forgetLease(match[2] as string);
    else if (match?.[1] === "task") {
      for (const leaseId of this.#viewsByTask.get(match[2] as string) ?? []) this.#views.delete(leaseId);
      this.#viewsByTask.delete(match[2] as string);
    }
  }

  private forgetLease(leaseId: string): void {
    const held = this.#views.get(leaseId);
    if (!held) return;
    this.#views.delete(leaseId);
    this.#viewsByTask.get(held.task.id)?.delete(leaseId);
  }

  /** The token's claims if it is a broker-signed token that verifies now. */
  async verify(token: string, now: number): Promise<JWTPayload | undefined> {
    // Keyed by a digest, not the token: a heap snapshot must not hold 10,000 live credentials.
    const digest = hash("sha256", token, "base64url");
    const cached = this.#verified.get(digest);
    if (cached) {
      if ((cached.exp ?? 0) * 1000 > now) return cached;
      this.#verified.delete(digest);
    }
    try {
      const { payload } = await jwtVerify(token, this.deps.verifyKey, {
        issuer: this.deps.issuer,
        algorithms: ["ES256", "EdDSA"],
        currentDate: new Date(now),
      });
      setBounded(this.#verified, digest, payload, VERIFIED_CACHE_SIZE);
      return payload;
    } catch {
      return undefined;
    }
  }

  /** Whether the policy in force still permits the lease (see {@link POLICY_DECISION_MS}). */
  private permitted(lease: Lease, task: Task, now: number): PolicyCheck {
    const { policy } = this.deps;
    const cached = this.#decisions.get(lease.id);
    if (cached && cached.generation === policy.generation && cached.until > now) return cached.check;
    const check = policy.stillPermitted(lease, task);
    setBounded(
      this.#decisions,
      lease.id,
      { generation: policy.generation, until: now + POLICY_DECISION_MS, check },
      VERIFIED_CACHE_SIZE,
    );
    return check;
  }

  private answer(verdict: Exclude<Verdict, "active">): { active: false } {
    this.deps.metrics.introspections.inc({ result: verdict });
    return INACTIVE;
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
    policy?: PolicyCheck,
  ): Promise<void> {
    const last = lease.inactiveAuditedAt ? Date.parse(lease.inactiveAuditedAt) : 0;
    if (now - last < INACTIVE_AUDIT_EVERY_MS) return;
    const write = this.deps.states.inactiveSeen(lease, new Date(now).toISOString());
    this.deps.audit.add(write, {
      ...this.event(lease, caller, "deny", policy ? `${verdict}: ${policy.reason}` : verdict),
      ...(policy ? { policyIds: policy.policyIds } : {}),
    });
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
