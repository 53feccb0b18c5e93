import { createHash } from "node:crypto";
import {
  type Effect,
  type EntityJson,
  formatPolicies,
  type Policy,
  policyToText,
  preparsePolicySet,
  statefulIsAuthorized,
  validate,
} from "@cedar-policy/cedar-wasm/nodejs";
import type { ClaimType, PolicyRule, ResourceConfig } from "../config.ts";
import { type CedarFile, parseCedarFile } from "./cedar-files.ts";
import {
  type AgentLike,
  agentEntity,
  type RequestFacts,
  requestContext,
  resourceEntity,
} from "./cedar-request.ts";
import {
  ACTION_TYPE,
  AGENT_TYPE,
  cedarSchema,
  knownAttributes,
  type PolicyAction,
  RESOURCE_TYPE,
} from "./cedar-schema.ts";
import {
  type DeclaredClaims,
  type DeclaredClaimValues,
  declareClaims,
  declaredClaimValues,
} from "./claims.ts";
import { type CompiledRule, compileRule, prepareRules, ruleApplies } from "./compile-rules.ts";
import { PolicyLoadError } from "./policy-errors.ts";

/** What one policy generation is built from. */
export interface PolicyInputs {
  /** The running catalog. Rules may only name resources in it. */
  resources: readonly ResourceConfig[];
  /** The YAML rules, in order. */
  policies: readonly PolicyRule[];
  /** Claims `.cedar` policies may read besides those YAML rules name. */
  policyClaims?: Readonly<Record<string, ClaimType>>;
  /** Operator-written Cedar, already read. */
  cedarFiles?: readonly CedarFile[];
}

/** Cedar's answer to one request, with the ids of the policies that decided it. */
export interface CedarDecision {
  allowed: boolean;
  /** Allowed: the permits that held. Denied: the forbids that held, or none (nothing permitted). */
  policyIds: string[];
  /** Denied because a forbid policy could not be evaluated (fail closed). */
  erroredForbids: string[];
}

/** An agent as Cedar sees it, built once per decision. */
export interface AgentView {
  agent: AgentLike;
  claims: DeclaredClaimValues;
  entity: EntityJson;
}

/** Where each policy of a generation came from. */
export interface PolicySource {
  id: string;
  effect: Effect;
  /** `config policies[i]`, or `<file>:<line>`. */
  origin: string;
}

/**
 * One generation of policy: the YAML rules compiled to Cedar, the `.cedar` files, validated
 * together against the schema and preparsed once in cedar-wasm, keyed by a hash of the policy
 * set. Immutable; a reload builds a new one and swaps it in whole.
 */
export class CompiledPolicy {
  /**
   * The preparsed policy set's id in cedar-wasm: `jitkey-<sha256 of schema and set>`.
   * cedar-wasm keeps every preparsed set for the life of the process (it has no way to drop
   * one), so naming sets by content keeps that to one per distinct policy ever loaded.
   */
  readonly fingerprint: string;
  readonly schema: string;
  readonly declaredClaims: DeclaredClaims;
  readonly rules: readonly CompiledRule[];
  readonly sources: readonly PolicySource[];
  readonly #resources: ReadonlyMap<string, ResourceConfig>;
  readonly #resourceEntities: ReadonlyMap<string, EntityJson>;
  readonly #rulesById: ReadonlyMap<string, CompiledRule>;
  readonly #effects: ReadonlyMap<string, Effect>;
  readonly #policies: Readonly<Record<string, Policy>>;

  private constructor(inputs: PolicyInputs) {
    this.#resources = new Map(inputs.resources.map((resource) => [resource.name, resource]));
    this.#resourceEntities = new Map(
      inputs.resources.map((resource) => [resource.name, resourceEntity(resource)]),
    );
    const names = (index: number) => inputs.policies[index]?.name ?? `#${index}`;
    inputs.policies.forEach((rule, index) => {
      for (const name of rule.resources) {
        if (!this.#resources.has(name)) {
          throw new PolicyLoadError(`policies.${index} (${names(index)}): unknown resource "${name}"`);
        }
      }
    });
    this.declaredClaims = declareClaims(inputs.policies, inputs.policyClaims ?? {}, names);
    this.schema = cedarSchema(this.declaredClaims);
    this.rules = prepareRules(inputs.policies, this.declaredClaims);
    this.#rulesById = new Map(this.rules.map((rule) => [rule.id, rule]));

    const policies: Record<string, Policy> = {};
    const sources: PolicySource[] = [];
    const effects = new Map<string, Effect>();
    const add = (source: PolicySource, policy: Policy) => {
      const clash = sources.find(({ id }) => id === source.id);
      if (clash) {
        throw new PolicyLoadError(
          `policy id "${source.id}" of ${source.origin} is already used by ${clash.origin}`,
        );
      }
      policies[source.id] = policy;
      sources.push(source);
      effects.set(source.id, source.effect);
    };
    this.rules.forEach((rule, index) => {
      add(
        { id: rule.id, effect: "permit", origin: `config policies[${index}]` },
        compileRule(rule, this.rules.slice(0, index)),
      );
    });
    this.#checkCompiledRules(policies);
    const known = knownAttributes(this.declaredClaims);
    for (const file of inputs.cedarFiles ?? []) {
      for (const policy of parseCedarFile(file, this.schema, known)) {
        add(
          { id: policy.id, effect: policy.effect, origin: `${policy.path}:${policy.line ?? "?"}` },
          policy.text,
        );
      }
    }
    this.#policies = policies;
    this.sources = sources;
    this.#effects = effects;
    // The schema is hashed too: declaring a claim changes what agents carry into decisions.
    this.fingerprint = `jitkey-${createHash("sha256").update(this.schema).update(JSON.stringify(policies)).digest("hex")}`;
    const parsed = preparsePolicySet(this.fingerprint, { staticPolicies: policies });
    if (parsed.type === "failure") {
      throw new PolicyLoadError(
        `policy set does not parse: ${parsed.errors.map((e) => e.message).join("; ")}`,
      );
    }
  }

  /** Compiles, validates and preparses. Throws {@link PolicyLoadError}; nothing changes then. */
  static compile(inputs: PolicyInputs): CompiledPolicy {
    return new CompiledPolicy(inputs);
  }

  resource(name: string): ResourceConfig | undefined {
    return this.#resources.get(name);
  }

  /** The YAML rule a Cedar policy id names, if it names one. */
  ruleById(id: string): CompiledRule | undefined {
    return this.#rulesById.get(id);
  }

  /** The first YAML rule that applies to the agent and resource: the one its Cedar permit can hold for. */
  ruleFor(agent: AgentView, resource: string): CompiledRule | undefined {
    return this.rules.find((rule) => ruleApplies(rule, agent.agent.id, agent.claims, resource));
  }

  view(agent: AgentLike): AgentView {
    const claims = declaredClaimValues(agent.claims, this.declaredClaims);
    return { agent, claims, entity: agentEntity(agent, claims) };
  }

  /**
   * Asks Cedar. A forbid that fails to evaluate denies (Cedar itself would skip it, and a
   * broken forbid must not quietly let a request through). Throws when Cedar cannot take the
   * request at all, which is a bug in building it, not a decision.
   */
  authorize(action: PolicyAction, agent: AgentView, resource: string, facts: RequestFacts): CedarDecision {
    const resourceJson = this.#resourceEntities.get(resource);
    if (!resourceJson) throw new Error(`resource ${resource} is not in this policy's catalog`);
    const answer = statefulIsAuthorized({
      principal: { type: AGENT_TYPE, id: agent.agent.id },
      action: { type: ACTION_TYPE, id: action },
      resource: { type: RESOURCE_TYPE, id: resource },
      context: requestContext(facts),
      preparsedPolicySetId: this.fingerprint,
      entities: [agent.entity, resourceJson],
    });
    if (answer.type === "failure") {
      throw new Error(
        `cedar could not evaluate the request: ${answer.errors.map((e) => e.message).join("; ")}`,
      );
    }
    const { decision, diagnostics } = answer.response;
    const erroredForbids = diagnostics.errors
      .map(({ policyId }) => policyId)
      .filter((id) => this.#effects.get(id) === "forbid");
    if (erroredForbids.length > 0) return { allowed: false, policyIds: erroredForbids, erroredForbids };
    return { allowed: decision === "allow", policyIds: [...diagnostics.reason].sort(), erroredForbids: [] };
  }

  effectOf(id: string): Effect | undefined {
    return this.#effects.get(id);
  }

  /** The whole policy set as Cedar text, YAML rules as compiled: for operators and the docs. */
  text(): string {
    return this.sources
      .map(({ id, origin }) => {
        const policy = this.#policies[id] as Policy;
        return `// ${origin}\n${(typeof policy === "string" ? policy : compiledText(policy)).trim()}\n`;
      })
      .join("\n");
  }

  /** Compiled YAML rules must validate like any policy: a failure here is a compiler bug or a claim type clash. */
  #checkCompiledRules(policies: Record<string, Policy>): void {
    if (Object.keys(policies).length === 0) return;
    const answer = validate({
      schema: this.schema,
      policies: { staticPolicies: policies },
      validationSettings: { mode: "strict" },
    });
    const errors =
      answer.type === "failure"
        ? answer.errors.map((error) => error.message)
        : answer.validationErrors.map(({ policyId, error }) => `${policyId}: ${error.message}`);
    if (errors.length > 0)
      throw new PolicyLoadError(`YAML policies do not compile to valid Cedar: ${errors.join("; ")}`);
  }
}

/** A compiled rule as Cedar text, laid out for reading. */
function compiledText(policy: Policy): string {
  const text = policyToText(policy);
  if (text.type === "failure") return JSON.stringify(policy);
  const formatted = formatPolicies({ policyText: text.text, lineWidth: 100, indentWidth: 2 });
  return formatted.type === "success" ? formatted.formatted_policy : text.text;
}
