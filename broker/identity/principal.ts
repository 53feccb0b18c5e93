/** A verified workload. `id` is `<issuer name>:<claim value>`. */
export interface AgentPrincipal {
  readonly kind: "agent";
  readonly id: string;
  readonly issuer: string;
  /** The owner named on the issuer's config, for approvers and audit. */
  readonly owner?: string;
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
