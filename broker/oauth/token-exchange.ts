import { JwtAdapterOptions } from "../../adapters/jwt/jwt-adapter.ts";
import { AdapterError, type CredentialAdapter, type IssuedCredential } from "../../adapters/types.ts";
import type { AuditInput, AuditLog } from "../audit/audit-log.ts";
import type { Clock } from "../clock.ts";
import type { ResourceConfig } from "../config.ts";
import { AdapterUnavailableError, PolicyDeniedError } from "../errors.ts";
import { type AgentPrincipal, actorOf } from "../identity/principal.ts";
import type { IdentityVerifier } from "../identity/verified-identities.ts";
import { newId } from "../ids.ts";
import type { Introspection } from "../leases/introspection.ts";
import { holderOf, type Lease } from "../leases/lease.ts";
import type { LeaseRevoker } from "../leases/lease-revoker.ts";
import type { LeaseStates } from "../leases/lease-states.ts";
import type { Metrics } from "../metrics.ts";
import type { LeaseDecision, PolicyEngine } from "../policy/policy-engine.ts";
import type { Task } from "../tasks/task.ts";
import { credentialClaims } from "./credential-claims.ts";
import { type DpopVerifier, InvalidDpopProofError, type VerifiedProof } from "./dpop.ts";
import { OAuthError } from "./oauth-error.ts";
import { type ExchangeRequest, parseExchangeRequest } from "./token-request.ts";

/** The RFC 8693 §2.2.1 answer. */
export interface ExchangeResponse {
  access_token: string;
  issued_token_type: string;
  token_type: "Bearer" | "DPoP";
  expires_in: number;
  scope: string;
}

export interface TokenExchangeDeps {
  introspection: Pick<Introspection, "assess">;
  states: LeaseStates;
  revoker: Pick<LeaseRevoker, "request" | "revokeLateIssue">;
  policy: PolicyEngine;
  adapters: ReadonlyMap<string, CredentialAdapter>;
  /** Verifies actor tokens like any agent's identity token. */
  verifier: IdentityVerifier;
  dpop: Pick<DpopVerifier, "verify">;
  /** The token endpoint's public URL: a DPoP proof's `htu`. */
  tokenEndpoint: string;
  audit: AuditLog;
  metrics: Metrics;
  clock: Clock;
  /** `delegation.maxDepth`. */
  maxDepth: number;
}

/** A live parent credential, and everything the child is cut from. */
interface Parent {
  lease: Lease;
  task: Task;
  resource: ResourceConfig;
  adapter: CredentialAdapter;
}

/**
 * Delegation by token exchange (RFC 8693): the agent holding a live `jwt` credential gets a
 * narrower one for a sub-agent or tool server. The new credential is a lease of the same task
 * and resource, in the same shard, with scopes ⊆ the parent's, an end ≤ the parent's, an `act`
 * claim naming every hop, and at most `maxDepth` hops from the lease minted directly. It is
 * written as `issuing` only while its task is approved and its parent `active` (one atomic
 * write), and introspection checks every ancestor, so revoking any of them ends it at once.
 */
export class TokenExchange {
  constructor(private readonly deps: TokenExchangeDeps) {}

  /**
   * Answers a token exchange form from an authenticated caller, with the request's `DPoP`
   * header if it had one. Throws {@link OAuthError}; every answer is audited.
   */
  async exchange(
    caller: AgentPrincipal,
    form: Record<string, unknown>,
    proofHeader: string | undefined,
  ): Promise<ExchangeResponse> {
    // What the denial event names, filled in as the parent becomes known.
    const context: Partial<AuditInput> = {};
    try {
      const request = parseExchangeRequest(form);
      const proof = await this.proof(proofHeader, request);
      const parent = await this.parent(caller, request.subjectToken, context);
      this.checkTarget(parent, request);
      const binding = this.binding(parent.lease, request, proof);
      const actor = await this.actor(caller, request);
      const decision = this.decide(parent, request, actor);
      const lease = this.childLease(parent, { caller, actor, decision, binding, request });
      await this.writeIssuing(lease, parent.lease);
      const issued = await this.issue(caller, parent, lease);
      return await this.activate(caller, parent, lease, issued, request);
    } catch (error) {
      if (error instanceof OAuthError) await this.deny(caller, context, error.error, error.description);
      if (error instanceof AdapterUnavailableError)
        await this.deny(caller, context, error.code, error.message);
      throw error;
    }
  }

  /** The proof's key, when a `DPoP` header came with the request (`ath`, if any, must hash the subject token). */
  private async proof(
    header: string | undefined,
    request: ExchangeRequest,
  ): Promise<VerifiedProof | undefined> {
    if (header === undefined) return undefined;
    try {
      return await this.deps.dpop.verify(header, {
        method: "POST",
        url: this.deps.tokenEndpoint,
        accessToken: request.subjectToken,
      });
    } catch (error) {
      if (error instanceof InvalidDpopProofError) throw new OAuthError("invalid_dpop_proof", error.reason);
      throw error;
    }
  }

  /**
   * The subject token's lease, live now, held by the caller, and allowed one more hop. Names
   * it in `context` as soon as it is known, for the denial event.
   */
  private async parent(
    caller: AgentPrincipal,
    subjectToken: string,
    context: Partial<AuditInput>,
  ): Promise<Parent> {
    const { verdict, lease, task } = await this.deps.introspection.assess(
      subjectToken,
      this.deps.clock.now(),
    );
    // RFC 8693 §2.2.2: a subject token that is not a valid credential is invalid_request.
    if (verdict === "invalid_token" || verdict === "unknown_lease" || !lease)
      throw new OAuthError("invalid_request", "subject_token is not a credential this broker issued");
    Object.assign(context, { taskId: lease.taskId, leaseId: lease.id, resource: lease.resource });
    if (verdict !== "active" || !task)
      throw new OAuthError(
        "invalid_grant",
        `subject_token is no longer live (${verdict.replaceAll("_", " ")})`,
      );
    if (holderOf(lease) !== caller.id)
      throw new OAuthError("invalid_grant", "subject_token was not issued to this client");
    const depth = (lease.delegationDepth ?? 0) + 1;
    if (depth > this.deps.maxDepth)
      throw new OAuthError("invalid_grant", `delegation is limited to ${this.deps.maxDepth} hops`);
    const resource = this.deps.policy.resource(lease.resource);
    const adapter = this.deps.adapters.get(lease.resource);
    if (!resource || !adapter?.capabilities.tokenClaims)
      throw new OAuthError("invalid_grant", `credentials of ${lease.resource} cannot be delegated`);
    return { lease, task, resource, adapter };
  }

  /** RFC 8707 / RFC 8693 targets may only name the parent's own resource: delegation never widens. */
  private checkTarget(parent: Parent, request: ExchangeRequest): void {
    const audience = audienceOf(parent.resource);
    for (const resource of request.resources)
      if (resource !== audience)
        throw new OAuthError("invalid_target", "resource must be the subject token's own resource");
    for (const name of request.audiences)
      if (name !== audience && name !== parent.resource.name)
        throw new OAuthError("invalid_target", "audience must be the subject token's own resource");
  }

  /**
   * The key the child is bound to. A DPoP-bound parent must be presented with a proof signed by
   * its key (the caller proves it holds the parent, RFC 9449 §7 at the token endpoint), and
   * its child is bound too: to `dpop_jkt` (the sub-agent's key) or else the proof's key. An
   * unbound parent's child is bound when a proof or `dpop_jkt` comes with the request.
   */
  private binding(
    parent: Lease,
    request: ExchangeRequest,
    proof: VerifiedProof | undefined,
  ): { jkt: string } | undefined {
    if (parent.dpopJkt) {
      if (!proof)
        throw new OAuthError(
          "invalid_dpop_proof",
          "subject_token is DPoP-bound: send a DPoP proof signed with its key",
        );
      if (proof.jkt !== parent.dpopJkt)
        throw new OAuthError("invalid_dpop_proof", "the DPoP proof is not signed with subject_token's key");
    }
    const jkt = request.dpopJkt ?? proof?.jkt;
    return jkt ? { jkt } : undefined;
  }

  /** Who will hold the new credential: the agent the actor token names, or the caller. */
  private async actor(caller: AgentPrincipal, request: ExchangeRequest): Promise<string> {
    if (!request.actorToken) return caller.id;
    try {
      return (await this.deps.verifier.verify(request.actorToken)).id;
    } catch {
      throw new OAuthError("invalid_request", "actor_token is not a valid agent identity token");
    }
  }

  /** Scopes ⊆ the parent's, and policy as it is now: may the task's agent delegate this to `actor`? */
  private decide(parent: Parent, request: ExchangeRequest, actor: string): LeaseDecision {
    const scopes = request.scopes ?? parent.lease.scopes;
    const wider = scopes.filter((scope) => !parent.lease.scopes.includes(scope));
    if (wider.length > 0)
      throw new OAuthError("invalid_scope", `scope ${wider.join(" ")} is not in subject_token's scope`);
    try {
      const { task } = parent;
      const agent = {
        id: task.agentId,
        ...(task.agentOwner !== undefined ? { owner: task.agentOwner } : {}),
        ...(task.agentClaims !== undefined ? { claims: task.agentClaims } : {}),
      };
      return this.deps.policy.evaluateDelegation(agent, task, {
        resource: parent.lease.resource,
        scopes,
        actor,
      });
    } catch (error) {
      if (error instanceof PolicyDeniedError) throw new OAuthError("invalid_grant", error.reason);
      throw error;
    }
  }

  private childLease(
    parent: Parent,
    cut: {
      caller: AgentPrincipal;
      actor: string;
      decision: LeaseDecision;
      binding: { jkt: string } | undefined;
      request: ExchangeRequest;
    },
  ): Lease {
    const now = this.deps.clock.now();
    const maxTtlSeconds = Math.min(
      cut.decision.maxTtlSeconds,
      parent.adapter.capabilities.maxTtlSeconds ?? Number.POSITIVE_INFINITY,
    );
    const ttlSeconds = cut.request.requestedTtlSeconds ?? maxTtlSeconds;
    if (ttlSeconds > maxTtlSeconds)
      throw new OAuthError(
        "invalid_request",
        `requested_ttl exceeds the maximum of ${maxTtlSeconds} seconds for ${parent.resource.name}`,
      );
    // Never past the parent (which never passes its task); whole seconds, as JWT `exp` is.
    const endMs = Math.min(now + ttlSeconds * 1000, Date.parse(parent.lease.expiresAt));
    const expiresAtMs = Math.floor(endMs / 1000) * 1000;
    if (expiresAtMs <= now) throw new OAuthError("invalid_grant", "subject_token expires within a second");
    const ancestors = [...(parent.lease.ancestorLeaseIds ?? []), parent.lease.id];
    return {
      id: newId("lse", { sameShardAs: parent.task.id }),
      tenant: parent.task.tenant,
      taskId: parent.task.id,
      agentId: parent.task.agentId,
      resource: parent.lease.resource,
      adapter: parent.adapter.kind,
      scopes: cut.decision.scopes,
      issuedAt: new Date(now).toISOString(),
      expiresAt: new Date(expiresAtMs).toISOString(),
      status: "issuing",
      revocable: parent.adapter.capabilities.revocation !== "none",
      revocation: parent.adapter.capabilities.revocation,
      ...(cut.binding ? { dpopJkt: cut.binding.jkt } : {}),
      parentLeaseId: parent.lease.id,
      ancestorLeaseIds: ancestors,
      delegationDepth: ancestors.length,
      actors: [cut.actor, ...(parent.lease.actors ?? [])],
      delegatedBy: cut.caller.id,
    };
  }

  /** The child as `issuing`, atomically with checks that its task is approved and its parent active. */
  private async writeIssuing(lease: Lease, parent: Lease): Promise<void> {
    const nowIso = new Date(this.deps.clock.now()).toISOString();
    const written = await this.deps.audit.apply(this.deps.states.issueChild(lease, parent, nowIso));
    if (written.ok) return;
    throw new OAuthError(
      "invalid_grant",
      written.failedGuard === 1
        ? "subject_token's lease is no longer active"
        : "the task is no longer approved",
    );
  }

  /** Asks the adapter; on failure the child goes straight to revocation. */
  private async issue(caller: AgentPrincipal, parent: Parent, lease: Lease): Promise<IssuedCredential> {
    try {
      return await parent.adapter.issue({
        leaseId: lease.id,
        taskId: lease.taskId,
        agentId: lease.agentId,
        resource: lease.resource,
        scopes: lease.scopes,
        expiresAt: new Date(lease.expiresAt),
        claims: credentialClaims(parent.task, lease),
        ...(lease.dpopJkt ? { binding: { jkt: lease.dpopJkt } } : {}),
      });
    } catch (error) {
      this.deps.metrics.issueFailures.inc({ resource: lease.resource });
      await this.deps.revoker.request([lease.id], {
        reason: "issue_failed",
        requestedAt: new Date(this.deps.clock.now()).toISOString(),
        requestedBy: actorOf(caller),
      });
      const reason = error instanceof AdapterError ? error.message : "adapter failed";
      throw new AdapterUnavailableError(`${lease.resource}: ${reason}`);
    }
  }

  /** issuing → active with the `lease_delegated` event, in one write. */
  private async activate(
    caller: AgentPrincipal,
    parent: Parent,
    lease: Lease,
    issued: IssuedCredential,
    request: ExchangeRequest,
  ): Promise<ExchangeResponse> {
    const now = this.deps.clock.now();
    const write = this.deps.states.activate(
      lease,
      { expiresAt: lease.expiresAt },
      new Date(now).toISOString(),
    );
    this.deps.audit.add(write, {
      type: "lease_delegated",
      actor: actorOf(caller),
      agentId: caller.id,
      taskId: lease.taskId,
      leaseId: lease.id,
      resource: lease.resource,
      decision: "allow",
      reason: `delegated from ${parent.lease.id} to ${lease.actors?.[0]}`,
      parentLeaseId: parent.lease.id,
      delegatedTo: lease.actors?.[0],
      delegationDepth: lease.delegationDepth,
      scopes: lease.scopes,
      expiresAt: lease.expiresAt,
      ...(lease.dpopJkt ? { dpopJkt: lease.dpopJkt } : {}),
    });
    const activated = await this.deps.audit.apply(write);
    if (!activated.ok) {
      // Its parent or task ended while the token was signed: nothing may leave.
      await this.deps.revoker.revokeLateIssue(lease, parent.adapter, issued);
      throw new OAuthError("invalid_grant", "subject_token's lease was revoked during the exchange");
    }
    this.deps.metrics.leasesMinted.inc({ resource: lease.resource, adapter: parent.adapter.kind });
    return {
      access_token: issued.credential.token as string,
      issued_token_type: request.issuedTokenType,
      token_type: lease.dpopJkt ? "DPoP" : "Bearer",
      expires_in: Math.max(1, Math.round((Date.parse(lease.expiresAt) - now) / 1000)),
      scope: lease.scopes.join(" "),
    };
  }

  private async deny(
    caller: AgentPrincipal,
    context: Partial<AuditInput>,
    code: string,
    reason: string,
  ): Promise<void> {
    this.deps.metrics.denials.inc({ decision: "delegation", code });
    await this.deps.audit.record({
      ...context,
      type: "delegation_denied",
      actor: actorOf(caller),
      agentId: caller.id,
      decision: "deny",
      reason,
      error: code,
    });
  }
}

/** The audience a token resource's credentials carry: its RFC 8707 resource identifier. */
export function audienceOf(resource: ResourceConfig): string | undefined {
  if (resource.adapter !== "jwt") return undefined;
  const options = JwtAdapterOptions.safeParse(resource.options);
  return options.success ? options.data.audience : undefined;
}
