import { createHash } from "node:crypto";
import type { Effect, EntityJson, Policy, PolicyJson } from "@cedar-policy/cedar-wasm/nodejs";
import { setBounded } from "../bounded-map.ts";
import type { ClaimType, PolicyRule, ResourceConfig } from "../config.ts";
import { AttributeUse } from "./attribute-use.ts";
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
  formatPolicies,
  policyToText,
  preparsePolicySet,
  statefulIsAuthorized,
  validate,
} from "./cedar-wasm.ts";
import {
  type DeclaredClaims,
  type DeclaredClaimValues,
  declareClaims,
  declaredClaimValues,
} from "./claims.ts";
import { type CompiledRule, compileRule, prepareRules, ruleApplies } from "./compile-rules.ts";
import { PolicyLoadError } from "./policy-errors.ts";
import { allowSurvivesShorterTtl } from "./shrinking-ttl.ts";

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
 * One generation of policy: the YAML rules compiled to Cedar and the `.cedar` files,
 * validated together against the schema and preparsed once in cedar-wasm (a slice per
 * resource, see #preparseSlices). Immutable; a reload builds a new one and swaps it in whole.
 */
/** Decisions one generation remembers (a few MB at most). */
const DECISIONS_KEPT = 10_000;

export class CompiledPolicy {
  /** Cedar's answers, by the exact request asked (see {@link CompiledPolicy.authorize}). */
  readonly #decisions = new Map<string, CedarDecision>();
  /**
   * Introspection allows, by the request without its `ttlSeconds`, with the largest lifetime
   * allowed — when no policy can turn an allow into a deny as that lifetime shrinks.
   */
  readonly #introspectAllows: Map<string, { decision: CedarDecision; ttlSeconds: number }> | undefined;
  /** `jitkey-<sha256 of schema and policy set>`: equal fingerprints decide alike. */
  readonly fingerprint: string;
  readonly schema: string;
  readonly declaredClaims: DeclaredClaims;
  readonly rules: readonly CompiledRule[];
  readonly sources: readonly PolicySource[];
  readonly #resources: ReadonlyMap<string, ResourceConfig>;
  readonly #resourceEntities: ReadonlyMap<string, EntityJson | undefined>;
  /** What requests must carry: only what some policy reads. */
  readonly attributeUse: AttributeUse;
  readonly #rulesById: ReadonlyMap<string, CompiledRule>;
  readonly #effects: ReadonlyMap<string, Effect>;
  readonly #policies: Readonly<Record<string, Policy>>;
  /** Per resource, the id of the preparsed slice of the set that can apply to it. */
  readonly #slices: ReadonlyMap<string, string>;

  private constructor(inputs: PolicyInputs) {
    this.#resources = new Map(inputs.resources.map((resource) => [resource.name, resource]));
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
    const policyJsons: PolicyJson[] = [];
    const sources: PolicySource[] = [];
    const effects = new Map<string, Effect>();
    const add = (source: PolicySource, policy: Policy, json: PolicyJson) => {
      const clash = sources.find(({ id }) => id === source.id);
      if (clash) {
        throw new PolicyLoadError(
          `policy id "${source.id}" of ${source.origin} is already used by ${clash.origin}`,
        );
      }
      policies[source.id] = policy;
      policyJsons.push(json);
      sources.push(source);
      effects.set(source.id, source.effect);
    };
    this.rules.forEach((rule, index) => {
      const json = compileRule(rule, this.rules.slice(0, index));
      add({ id: rule.id, effect: "permit", origin: `config policies[${index}]` }, json, json);
    });
    this.#checkCompiledRules(policies);
    const known = knownAttributes(this.declaredClaims);
    for (const file of inputs.cedarFiles ?? []) {
      for (const policy of parseCedarFile(file, this.schema, known)) {
        add(
          { id: policy.id, effect: policy.effect, origin: `${policy.path}:${policy.line ?? "?"}` },
          policy.text,
          policy.json,
        );
      }
    }
    this.#policies = policies;
    this.attributeUse = AttributeUse.of(policyJsons);
    const ofEffect = sources.map(({ effect }, index) => ({ effect, json: policyJsons[index] as PolicyJson }));
    if (allowSurvivesShorterTtl(ofEffect)) this.#introspectAllows = new Map();
    this.#resourceEntities = new Map(
      // With no resource attribute read, the resource is only compared by id: no entity needed.
      inputs.resources.map((resource) => [
        resource.name,
        this.attributeUse.needsAny("resource") ? resourceEntity(resource, this.attributeUse) : undefined,
      ]),
    );
    this.sources = sources;
    this.#effects = effects;
    this.fingerprint = contentId(this.schema, policies);
    this.#slices = this.#preparseSlices(inputs.resources, policyJsons);
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
    return { agent, claims, entity: agentEntity(agent, claims, this.attributeUse) };
  }

  /**
   * Asks Cedar. A forbid that fails to evaluate denies (Cedar itself would skip it, and a
   * broken forbid must not quietly let a request through). Throws when Cedar cannot take the
   * request at all, which is a bug in building it, not a decision.
   */
  authorize(action: PolicyAction, agent: AgentView, resource: string, facts: RequestFacts): CedarDecision {
    if (!this.#resourceEntities.has(resource))
      throw new Error(`resource ${resource} is not in this policy's catalog`);
    const context = requestContext(facts, this.attributeUse);
    if (action === "introspect" && this.#introspectAllows && typeof context.ttlSeconds === "number")
      return this.#introspect(this.#introspectAllows, agent, resource, context, context.ttlSeconds);
    // A request carries only what some policy reads (the time, say, only if a policy reads it),
    // so equal requests get equal answers from this immutable generation: ask Cedar once.
    const key = JSON.stringify([action, resource, agent.entity, context]);
    const remembered = this.#decisions.get(key);
    if (remembered) return remembered;
    const decision = this.#ask(action, agent, resource, context);
    setBounded(this.#decisions, key, decision, DECISIONS_KEPT);
    return decision;
  }

  /**
   * Introspection asks about the same live lease again and again, with its remaining lifetime
   * one second shorter each time. When the policies allow for it (see
   * {@link allowSurvivesShorterTtl}), an allow for a lifetime answers every shorter one: Cedar
   * is asked again only for a longer lifetime, or after a deny. The policy ids are those of the
   * allow remembered; an allowed introspection records none.
   */
  #introspect(
    allows: Map<string, { decision: CedarDecision; ttlSeconds: number }>,
    agent: AgentView,
    resource: string,
    context: ReturnType<typeof requestContext>,
    ttlSeconds: number,
  ): CedarDecision {
    const { ttlSeconds: _, ...timeless } = context;
    const key = JSON.stringify([resource, agent.entity, timeless]);
    const held = allows.get(key);
    if (held && ttlSeconds <= held.ttlSeconds) return held.decision;
    const decision = this.#ask("introspect", agent, resource, context);
    if (decision.allowed) setBounded(allows, key, { decision, ttlSeconds }, DECISIONS_KEPT);
    return decision;
  }

  #ask(
    action: PolicyAction,
    agent: AgentView,
    resource: string,
    context: ReturnType<typeof requestContext>,
  ): CedarDecision {
    const resourceJson = this.#resourceEntities.get(resource);
    const answer = statefulIsAuthorized({
      principal: { type: AGENT_TYPE, id: agent.agent.id },
      action: { type: ACTION_TYPE, id: action },
      resource: { type: RESOURCE_TYPE, id: resource },
      context,
      preparsedPolicySetId: this.#slices.get(resource) as string,
      entities: resourceJson ? [agent.entity, resourceJson] : [agent.entity],
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

  /**
   * Preparses, per resource, only the policies that can apply to it: cedar-wasm copies the
   * preparsed set on every call and evaluates each policy in it, so a decision costs in
   * proportion to the set's size. A policy left out of a resource's slice names other
   * resources only (a YAML rule's `resources`, a `.cedar` scope `resource == ...`), so it
   * could never hold there: each slice decides exactly as the whole set would, with the same
   * policy ids. Slices are named by content, because cedar-wasm keeps every preparsed set for
   * the life of the process (it has no way to drop one): that bounds them to one per distinct
   * slice ever loaded.
   */
  #preparseSlices(resources: readonly ResourceConfig[], jsons: readonly PolicyJson[]): Map<string, string> {
    const slices = new Map<string, string>();
    const preparsed = new Set<string>();
    for (const resource of resources) {
      const slice: Record<string, Policy> = {};
      this.sources.forEach(({ id }, index) => {
        const rule = this.#rulesById.get(id);
        const applies = rule ? rule.resources.has(resource.name) : mayApplyTo(jsons[index], resource.name);
        if (applies) slice[id] = this.#policies[id] as Policy;
      });
      const sliceId = contentId(this.schema, slice);
      if (!preparsed.has(sliceId)) {
        const answer = preparsePolicySet(sliceId, { staticPolicies: slice });
        if (answer.type === "failure") {
          throw new PolicyLoadError(
            `policy set does not parse: ${answer.errors.map((e) => e.message).join("; ")}`,
          );
        }
        preparsed.add(sliceId);
      }
      slices.set(resource.name, sliceId);
    }
    return slices;
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

/** A name for a policy set by its content (the schema included: it shapes what requests carry). */
function contentId(schema: string, policies: Readonly<Record<string, Policy>>): string {
  return `jitkey-${createHash("sha256").update(schema).update(JSON.stringify(policies)).digest("hex")}`;
}

/** Whether a policy's resource scope admits the resource (no resource has parents: `in` is `==`). */
function mayApplyTo(policy: PolicyJson | undefined, resource: string): boolean {
  const scope = policy?.resource;
  if (!scope || scope.op === "All" || !("entity" in scope) || !scope.entity) return true;
  const entity = "__entity" in scope.entity ? scope.entity.__entity : scope.entity;
  return entity.type !== RESOURCE_TYPE || entity.id === resource;
}
