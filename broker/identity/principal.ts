/** One identity claim value policies may test; other JSON shapes are not kept. */
export type ClaimValue = string | number | boolean | readonly string[];

/** The bounded identity claims of a verified token (see `boundClaims` in agent-verifier.ts). */
export type AgentClaims = Readonly<Record<string, ClaimValue>>;

/** A verified workload. `id` is `<issuer name>:<claim value>`. */
export interface AgentPrincipal {
  readonly kind: "agent";
  readonly id: string;
  readonly issuer: string;
  /** The owner named on the issuer's config, for approvers and audit. */
  readonly owner?: string;
  /**
   * The token's claims that policy rules may match, bounded in count and size. Not
   * enumerable (see {@link withClaims}): a principal that is logged, spread or serialised
   * does not carry the token's claims along. Absent means none: claim conditions then fail.
   */
  readonly claims?: AgentClaims;
}

/**
 * Attaches verified claims to an agent as a non-enumerable property, so they reach policy
 * but never a log line, an audit record or a JSON body by accident.
 */
export function withClaims<T extends AgentPrincipal>(agent: T, claims: AgentClaims): T {
  return Object.defineProperty(agent, "claims", { value: Object.freeze({ ...claims }), enumerable: false });
}

/** A human or automation allowed to approve, revoke and read the audit trail. */
export interface OperatorPrincipal {
  readonly kind: "operator";
  readonly id: string;
}

/** A resource server allowed to call `/v1/introspect`. */
export interface IntrospectorPrincipal {
  readonly kind: "introspector";
  readonly id: string;
  /** The resources whose credentials it may ask about; absent means all. */
  readonly resources?: readonly string[];
}

export type Principal = AgentPrincipal | OperatorPrincipal | IntrospectorPrincipal;

/** How a principal appears as an audit `actor`. */
export function actorOf(principal: Principal): string {
  return `${principal.kind}:${principal.id}`;
}
