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

/** One attribute of an entity or record type: its Cedar type and what it holds. */
interface Field {
  name: string;
  type: string;
  optional?: boolean;
  doc: string;
}

const AGENT_FIELDS: readonly Field[] = [
  { name: "id", type: "String", doc: '"<issuer name>:<agentIdClaim value>"' },
  { name: "issuer", type: "String", doc: "the issuer's configured name" },
  { name: "owner", type: "String", optional: true, doc: "the issuer's accountable owner" },
  { name: "claims", type: "Claims", doc: "the identity claims policies may read" },
];

const RESOURCE_FIELDS: readonly Field[] = [
  { name: "name", type: "String", doc: "the resource's name" },
  { name: "adapter", type: "String", doc: "jwt | vault | ..." },
  { name: "classification", type: "String", doc: "public | internal | confidential | restricted" },
  { name: "classificationRank", type: "Long", doc: "0 | 1 | 2 | 3, in that order" },
  { name: "owner", type: "String", optional: true, doc: "the resource's accountable owner" },
  { name: "tags", type: "Set<String>", doc: "the resource's tags (config resources[].tags)" },
  { name: "scopes", type: "Set<String>", doc: "every scope the resource has" },
  { name: "maxTtlSeconds", type: "Long", doc: "the longest lease the resource gives" },
];

const TASK_FIELDS: readonly Field[] = [
  { name: "id", type: "String", optional: true, doc: "absent at createTask" },
  { name: "goal", type: "String", doc: "the goal the agent declared" },
  { name: "resources", type: "Set<String>", doc: "every resource the task names" },
  {
    name: "scopes",
    type: "Set<String>",
    doc: "the task's scopes on this resource (createTask: those asked)",
  },
  { name: "classification", type: "String", doc: "the task's dataClassification" },
  { name: "classificationRank", type: "Long", doc: "0 | 1 | 2 | 3" },
  {
    name: "approver",
    type: "String",
    optional: true,
    doc: '"operator:<name>" or "policy:<rules>", once approved',
  },
  { name: "ageSeconds", type: "Long", doc: "seconds since the task was created; 0 at createTask" },
  { name: "ttlSeconds", type: "Long", optional: true, doc: "the task's lifetime" },
];

const CONTEXT_FIELDS: readonly Field[] = [
  { name: "task", type: "Task", doc: "the task the request belongs to" },
  { name: "scopes", type: "Set<String>", doc: "what this request asks for on this resource" },
  {
    name: "ttlSeconds",
    type: "Long",
    optional: true,
    doc: "mint, delegate: the lease lifetime; introspect: what is left of it",
  },
  { name: "now", type: "Long", doc: "request time, seconds since the epoch" },
  { name: "time", type: "datetime", doc: "request time, UTC" },
  {
    name: "sourceAddress",
    type: "ipaddr",
    optional: true,
    doc: "the caller's address, when there is a caller",
  },
  {
    name: "actor",
    type: "String",
    optional: true,
    doc: "delegate: the agent the credential is delegated to",
  },
];

const CEDAR_CLAIM_TYPES: Record<ClaimType, string> = {
  string: "String",
  "string[]": "Set<String>",
  number: "Long",
  boolean: "Bool",
};

/**
 * The attributes a `has` test may name, by the path it is asked on. Cedar's validator
 * types `x has a` as plain false when the closed record type of `x` has no `a`, so
 * `principal.claims has actr && ...` would load and never hold: such a test is refused
 * instead (see cedar-files.ts).
 */
export function knownAttributes(claims: DeclaredClaims): ReadonlyMap<string, ReadonlySet<string>> {
  const names = (fields: readonly Field[]) => new Set(fields.map(({ name }) => name));
  return new Map([
    ["principal", names(AGENT_FIELDS)],
    ["principal.claims", new Set(claims.keys())],
    ["resource", names(RESOURCE_FIELDS)],
    ["context", names(CONTEXT_FIELDS)],
    ["context.task", names(TASK_FIELDS)],
  ]);
}

/**
 * The Cedar schema every policy is validated against at load. Only the claims record
 * depends on the configuration: it lists the declared claims, all optional, so a policy
 * must test `principal.claims has x` before reading `x`, and one naming an undeclared
 * claim or any unknown attribute is refused.
 */
export function cedarSchema(claims: DeclaredClaims): string {
  const claimFields: Field[] = [...claims].map(([name, type]) => ({
    name,
    type: CEDAR_CLAIM_TYPES[type],
    optional: true,
    doc: type,
  }));
  return `namespace ${NAMESPACE} {
  // The agent's identity claims that policies may read (YAML claims: conditions and policyClaims).
  type Claims = {
${fields(claimFields)}  };

  // A workload, as verified from its identity token. The entity id is the agent id.
  entity Agent = {
${fields(AGENT_FIELDS)}  };

  // A catalog entry (config resources). The entity id is the resource name.
  entity Resource = {
${fields(RESOURCE_FIELDS)}  };

  // The task a request belongs to (at createTask: the task being asked for).
  type Task = {
${fields(TASK_FIELDS)}  };

  type RequestContext = {
${fields(CONTEXT_FIELDS)}  };

  action ${POLICY_ACTIONS.join(", ")} appliesTo {
    principal: [Agent],
    resource: [Resource],
    context: RequestContext,
  };
}
`;
}

function fields(list: readonly Field[]): string {
  return list
    .map(
      ({ name, type, optional, doc }) =>
        `    ${JSON.stringify(name)}${optional ? "?" : ""}: ${type}, // ${doc}\n`,
    )
    .join("");
}
