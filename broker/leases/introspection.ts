import { createLocalJWKSet, jwtVerify } from "jose";
import type { SigningKeyring } from "../../adapters/jwt/signing-keys.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import type { RecordStore } from "../redis.ts";
import type { Task } from "../tasks/task.ts";
import type { Lease } from "./lease.ts";

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

/**
 * Answers "is this credential still authorised now?" for broker-signed tokens: active only
 * while the signature verifies, the lease is `active` and unexpired, and its task is approved
 * and unexpired — so completion or a force revoke switches it off at once.
 */
export class Introspection {
  readonly #keys;

  constructor(
    private readonly deps: {
      issuer: string;
      signingKeys: SigningKeyring;
      leases: RecordStore<Lease>;
      tasks: RecordStore<Task>;
      audit: AuditLog;
      clock: Clock;
    },
  ) {
    this.#keys = createLocalJWKSet(deps.signingKeys.publicJwks());
  }

  async introspect(token: string, actor: string): Promise<IntrospectionResult> {
    const { result, leaseId, reason } = await this.evaluate(token);
    const lease = leaseId ? await this.deps.leases.get(leaseId) : undefined;
    await this.deps.audit.record({
      type: "introspected",
      actor,
      leaseId,
      taskId: lease?.taskId,
      agentId: lease?.agentId,
      decision: result.active ? "allow" : "deny",
      reason,
    });
    return result;
  }

  private async evaluate(
    token: string,
  ): Promise<{ result: IntrospectionResult; leaseId?: string; reason: string }> {
    const now = this.deps.clock.now();
    let payload: Awaited<ReturnType<typeof jwtVerify>>["payload"];
    try {
      ({ payload } = await jwtVerify(token, this.#keys, {
        issuer: this.deps.issuer,
        algorithms: ["ES256", "EdDSA"],
        currentDate: new Date(now),
      }));
    } catch {
      return { result: { active: false }, reason: "token does not verify" };
    }
    const leaseId = payload.jti;
    if (!leaseId) return { result: { active: false }, reason: "token has no jti" };
    const lease = await this.deps.leases.get(leaseId);
    if (!lease) return { result: { active: false }, leaseId, reason: "lease missing" };
    if (lease.status !== "active" || Date.parse(lease.expiresAt) <= now) {
      return { result: { active: false }, leaseId, reason: `lease ${lease.status}` };
    }
    const task = await this.deps.tasks.get(lease.taskId);
    if (!task) return { result: { active: false }, leaseId, reason: "task missing" };
    if (task.status !== "approved" || Date.parse(task.expiresAt) <= now) {
      return { result: { active: false }, leaseId, reason: `task ${task.status}` };
    }
    return {
      leaseId,
      reason: "lease and task live",
      result: {
        active: true,
        scope: lease.scopes.join(" "),
        client_id: lease.agentId,
        sub: payload.sub ?? lease.agentId,
        aud: payload.aud ?? "",
        iss: payload.iss ?? this.deps.issuer,
        exp: payload.exp ?? Math.floor(Date.parse(lease.expiresAt) / 1000),
        iat: payload.iat ?? Math.floor(Date.parse(lease.issuedAt) / 1000),
        ...(payload.nbf !== undefined ? { nbf: payload.nbf } : {}),
        jti: leaseId,
        token_type: "Bearer",
        task_id: lease.taskId,
        resource: lease.resource,
      },
    };
  }
}
