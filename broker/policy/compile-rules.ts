import type { CedarValueJson, Expr, PolicyJson } from "@cedar-policy/cedar-wasm/nodejs";
import type { PolicyRule } from "../config.ts";
import { classificationRank } from "./cedar-request.ts";
import { ACTION_TYPE, AGENT_TYPE, POLICY_ACTIONS, RESOURCE_TYPE } from "./cedar-schema.ts";
import {
  type ClaimCondition,
  claimConditions,
  claimsSatisfy,
  type DeclaredClaims,
  type DeclaredClaimValues,
} from "./claims.ts";
import { Glob } from "./glob.ts";

/**
 * A YAML rule, ready for both sides of a decision: the Cedar permit it compiles to, and the
 * same "does it apply" test in TypeScript, used to read limits and explain denials.
 */
export interface CompiledRule {
  /** The Cedar policy id: the rule's `name`, or `#<index>` for an unnamed rule. */
  readonly id: string;
  readonly index: number;
  readonly rule: PolicyRule;
  readonly resources: ReadonlySet<string>;
  readonly agents: readonly Glob[];
  readonly claims: readonly ClaimCondition[];
}

/** Whether the rule applies to this agent and resource (its first-match condition). */
export function ruleApplies(
  rule: CompiledRule,
  agentId: string,
  claims: DeclaredClaimValues,
  resource: string,
): boolean {
  return (
    rule.resources.has(resource) &&
    rule.agents.some((glob) => glob.matches(agentId)) &&
    claimsSatisfy(rule.claims, claims)
  );
}

export function prepareRules(rules: readonly PolicyRule[], declared: DeclaredClaims): CompiledRule[] {
  return rules.map((rule, index) => ({
    id: rule.name ?? `#${index}`,
    index,
    rule,
    resources: new Set(rule.resources),
    agents: rule.agents.map((glob) => new Glob(glob)),
    claims: claimConditions(rule, declared),
  }));
}

/**
 * Compiles one rule to a Cedar permit. First match is kept in Cedar itself: the permit
 * carries an `unless` for each earlier rule that names one of its resources, so for any
 * (agent, resource) pair at most one YAML permit can hold — the first rule that applies,
 * exactly as the YAML reads. The policy set alone therefore decides; TypeScript only
 * reads the deciding rule's limits and words the reason for a denial.
 */
export function compileRule(compiled: CompiledRule, earlier: readonly CompiledRule[]): PolicyJson {
  const { rule } = compiled;
  const conditions: PolicyJson["conditions"] = [
    { kind: "when", body: appliesExpr(compiled, compiled.resources) },
    { kind: "when", body: call("containsAll", literal([...rule.scopes]), contextAttr("scopes")) },
    {
      kind: "when",
      body: binary(
        "<=",
        attr(contextAttr("task"), "classificationRank"),
        literal(classificationRank(rule.maxClassification)),
      ),
    },
    {
      kind: "when",
      body: binary(
        "||",
        binary("==", { Var: "action" }, entity(ACTION_TYPE, "createTask")),
        binary(
          "&&",
          { has: { left: { Var: "context" }, attr: "ttlSeconds" } },
          binary("<=", contextAttr("ttlSeconds"), literal(rule.maxTtlSeconds)),
        ),
      ),
    },
  ];
  for (const previous of earlier) {
    const shared = new Set([...previous.resources].filter((name) => compiled.resources.has(name)));
    if (shared.size > 0) conditions.push({ kind: "unless", body: appliesExpr(previous, shared) });
  }
  return {
    effect: "permit",
    principal: { op: "is", entity_type: AGENT_TYPE },
    action: { op: "in", entities: POLICY_ACTIONS.map((action) => ({ type: ACTION_TYPE, id: action })) },
    resource: { op: "is", entity_type: RESOURCE_TYPE },
    conditions,
    annotations: { id: compiled.id, source: `config policies[${compiled.index}]` },
  };
}

/** The rule's first-match condition, over the given subset of its resources. */
function appliesExpr(compiled: CompiledRule, resources: ReadonlySet<string>): Expr {
  const parts: Expr[] = [
    {
      in: {
        left: { Var: "resource" },
        right: { Set: [...resources].map((name) => entity(RESOURCE_TYPE, name)) },
      },
    },
    anyOf(compiled.agents.map((glob) => matchExpr(attr({ Var: "principal" }, "id"), glob))),
    ...compiled.claims.map(claimExpr),
  ];
  return allOf(parts);
}

function claimExpr({ claim, type, patterns }: ClaimCondition): Expr {
  const claims = attr({ Var: "principal" }, "claims");
  const value = attr(claims, claim);
  const test =
    type === "string[]"
      ? call("containsAny", value, literal(patterns.map((glob) => glob.source)))
      : anyOf(patterns.map((glob) => matchExpr(value, glob)));
  return binary("&&", { has: { left: claims, attr: claim } }, test);
}

function matchExpr(value: Expr, glob: Glob): Expr {
  return glob.exact
    ? binary("==", value, literal(glob.source))
    : { like: { left: value, pattern: glob.cedarPattern() } };
}

type BinaryOp = "==" | "<=" | "&&" | "||";

function binary(op: BinaryOp, left: Expr, right: Expr): Expr {
  return { [op]: { left, right } } as Expr;
}

function call(method: "containsAll" | "containsAny", left: Expr, right: Expr): Expr {
  return { [method]: { left, right } } as Expr;
}

function allOf(exprs: Expr[]): Expr {
  return exprs.reduce((left, right) => binary("&&", left, right));
}

function anyOf(exprs: Expr[]): Expr {
  return exprs.reduce((left, right) => binary("||", left, right));
}

function attr(left: Expr, name: string): Expr {
  return { ".": { left, attr: name } };
}

function contextAttr(name: string): Expr {
  return attr({ Var: "context" }, name);
}

function literal(value: CedarValueJson): Expr {
  return { Value: value };
}

function entity(type: string, id: string): Expr {
  return { Value: { __entity: { type, id } } };
}
