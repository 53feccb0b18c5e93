import type { ClaimType } from "../config.ts";
import type { DeclaredClaims } from "./claims.ts";

/** The Cedar namespace of jitkey's entity types and actions. */
export const NAMESPACE = "Jitkey";
export const AGENT_TYPE = `${NAMESPACE}::Agent`;
export const RESOURCE_TYPE = `${NAMESPACE}::Resource`;
export const ACTION_TYPE = `${NAMESPACE}::Action`;

/** What a request asks to do; every one is decided by the same policy set. */
export const POLICY_ACTIONS = ["createTask", "mint", "introspect", "delegate"] as const;
export type PolicyAction = (typeof POLICY_ACTIONS)[number];

const CEDAR_CLAIM_TYPES: Record<ClaimType, string> = {
  string: "String",
  "string[]": "Set<String>",
  number: "Long",
  boolean: "Bool",
};

/**
 * The Cedar schema every policy is validated against at load. Only the claims record
 * depends on the configuration: it lists the declared claims, all optional, so a policy
 * must test `principal.claims has x` before reading `x`, and one naming an undeclared
 * claim or any unknown attribute is refused.
 */
export function cedarSchema(claims: DeclaredClaims): string {
  const claimFields = [...claims]
    .map(([claim, type]) => `    ${JSON.stringify(claim)}?: ${CEDAR_CLAIM_TYPES[type]},\n`)
    .join("");
  return `namespace ${NAMESPACE} {
  // The agent's identity claims that policies may read (YAML claims: conditions and policyClaims).
  type Claims = {
${claimFields}  };

  // A workload, as verified from its identity token. The entity id is the agent id.
  entity Agent = {
    id: String,                  // "<issuer name>:<agentIdClaim value>"
    issuer: String,              // the issuer's configured name
    owner?: String,              // the issuer's accountable owner
    claims: Claims,
  };

  // A catalog entry (config resources). The entity id is the resource name.
  entity Resource = {
    name: String,
    adapter: String,
    classification: String,      // public | internal | confidential | restricted
    classificationRank: Long,    // 0 | 1 | 2 | 3, in that order
    owner?: String,
    tags: Set<String>,
    scopes: Set<String>,         // every scope the resource has
    maxTtlSeconds: Long,
  };

  // The task a request belongs to (at createTask: the task being asked for).
  type Task = {
    id?: String,                 // absent at createTask
    goal: String,
    resources: Set<String>,      // every resource the task names
    scopes: Set<String>,         // the task's scopes on this resource (at createTask: those asked)
    classification: String,      // the task's dataClassification
    classificationRank: Long,
    approver?: String,           // "operator:<name>" or "policy:<rules>", once approved
    ageSeconds: Long,            // since the task was created; 0 at createTask
    ttlSeconds?: Long,           // the task's lifetime
  };

  type RequestContext = {
    task: Task,
    scopes: Set<String>,         // what this request asks for on this resource
    ttlSeconds?: Long,           // mint, delegate: the lease lifetime; introspect: what is left of it
    now: Long,                   // request time, seconds since the epoch
    time: datetime,              // request time, UTC
    sourceAddress?: ipaddr,      // the caller's address, when there is a caller
    actor?: String,              // delegate: the agent the credential is delegated to
  };

  action createTask, mint, introspect, delegate appliesTo {
    principal: [Agent],
    resource: [Resource],
    context: RequestContext,
  };
}
`;
}
