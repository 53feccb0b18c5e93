import { type Clock, systemClock } from "../clock.ts";
import type { Classification, Config, PolicyRule, ResourceConfig } from "../config.ts";
import { PolicyDeniedError } from "../errors.ts";
import type { AgentClaims, ClaimValue } from "../identity/principal.ts";
import type { CedarFile } from "./cedar-files.ts";
import { type AgentLike, classificationRank, type RequestFacts, type TaskFacts } from "./cedar-request.ts";
import type { PolicyAction } from "./cedar-schema.ts";
import { claimsToRecord } from "./claims.ts";
import { type AgentView, type CedarDecision, CompiledPolicy } from "./compiled-policy.ts";
import { Glob } from "./glob.ts";
import { PolicyDenialError, PolicyLoadError } from "./policy-errors.ts";

export type { AgentLike } from "./cedar-request.ts";
export { classificationRank } from "./cedar-request.ts";

/** Matches an agent id against a rule glob where `*` is any run of characters. */
export function agentGlobMatches(glob: string, agentId: string): boolean {
  return new Glob(glob).matches(agentId);
}

/** A task request after policy: what was granted and whether a rule approved it. */
export interface TaskDecision {
  resources: {
    resource: string;
    scopes: string[];
    owner?: string;
    /** The YAML rule that granted it (for a grant by `.cedar` permits only, a stand-in named `cedar:<ids>`). */
    rule: PolicyRule;
    /** The Cedar policies that permitted this resource. */
    policyIds: string[];
  }[];
  dataClassification: Classification;
  autoApprove: boolean;
  /** The rules that approved it, for the audit trail. */
  approvedBy?: string;
  /** Every policy that permitted the task, for the audit trail. */
  policyIds: string[];
}

/** A lease request after policy. */
export interface LeaseDecision {
  scopes: string[];
  /** The longest lease the rule and resource allow now. */
  maxTtlSeconds: number;
  rule: PolicyRule;
  /** The Cedar policies that permitted it, for the audit trail. */
  policyIds: string[];
}

/** The answer of {@link PolicyEngine.stillPermitted}. */
export interface PolicyCheck {
  allowed: boolean;
  reason: string;
  /** Allowed: the permits that held. Denied: the forbids that held, or none. */
  policyIds: string[];
}

/** A task as policy reads it; a stored `Task` fits. */
export interface TaskLike {
  id?: string;
  agentId?: string;
  agentOwner?: string;
  goal?: string;
  resources: readonly { resource: string; scopes: readonly string[] }[];
  dataClassification: Classification;
  approvedBy?: string;
  createdAt?: string;
  expiresAt?: string;
  /** The claims recorded when the task was created ({@link PolicyEngine.claimsToRecord}). */
  agentClaims?: AgentClaims;
}

/** A lease as policy reads it; a stored `Lease` fits. */
export interface LeaseLike {
  resource: string;
  scopes: readonly string[];
  expiresAt: string;
}

/** Request facts that come from the HTTP layer, not from the task. */
export interface RequestOptions {
  /** The caller's address (`req.ip`), visible to `.cedar` policies as `context.sourceAddress`. */
  sourceAddress?: string;
}

/** The parts of the config a policy engine is built from. */
export type PolicyConfig = Pick<Config, "resources" | "policies"> &
  Partial<Pick<Config, "policyClaims" | "policyFiles">>;

/**
 * Decides task creation, minting, delegation and introspection on Cedar. The YAML rules
 * compile to Cedar permits (first match kept in Cedar, see compile-rules.ts) and `.cedar`
 * files add operator policies; forbid wins. Each decision reports the deciding policy ids
 * and, when a YAML rule granted it, that rule's limits. The policy in force can be replaced
 * at any time ({@link PolicyStore}); each decision reads one generation from start to end.
 */
export class PolicyEngine {
  #compiled: CompiledPolicy;
  #generation = 1;
  readonly #clock: Clock;
  /** Names of unnamed rules (`#<index>`) across generations, so old decisions still name theirs. */
  readonly #ruleNames = new WeakMap<PolicyRule, string>();

  /** Throws {@link PolicyLoadError} when the rules or files cannot be compiled. */
  constructor(config: PolicyConfig, options: { cedarFiles?: readonly CedarFile[]; clock?: Clock } = {}) {
    this.#clock = options.clock ?? systemClock;
    // Forbids an operator wrote must never be dropped silently: files are read by PolicyStore.
    if ((config.policyFiles?.length ?? 0) > 0 && options.cedarFiles === undefined) {
      throw new PolicyLoadError(
        "policyFiles are configured: build the engine with PolicyStore.open, which reads them",
      );
    }
    this.#compiled = CompiledPolicy.compile({ ...config, cedarFiles: options.cedarFiles ?? [] });
    this.#nameRules(this.#compiled);
  }

  /** Starts at 1 and counts the policies put in force by {@link replace}. */
  get generation(): number {
    return this.#generation;
  }

  /** The policy in force. */
  get compiled(): CompiledPolicy {
    return this.#compiled;
  }

  /** Puts a new policy in force for every decision that starts from now on. */
  replace(compiled: CompiledPolicy): void {
    this.#nameRules(compiled);
    this.#compiled = compiled;
    this.#generation += 1;
  }

  resource(name: string): ResourceConfig | undefined {
    return this.#compiled.resource(name);
  }

  /** The first rule for this agent and resource (claims included when an agent is given). */
  ruleFor(agent: string | AgentLike, resource: string): PolicyRule | undefined {
    const compiled = this.#compiled;
    return compiled.ruleFor(compiled.view(agentOf(agent)), resource)?.rule;
  }

  ruleName(rule: PolicyRule): string {
    return rule.name ?? this.#ruleNames.get(rule) ?? "unnamed rule";
  }

  /** The whole policy in force as Cedar text, YAML rules as compiled. */
  policyText(): string {
    return this.#compiled.text();
  }

  /**
   * Decides a new task: for each resource, Cedar is asked `createTask` with the task's
   * scopes on it and its classification. Throws {@link PolicyDenialError} (a
   * {@link PolicyDeniedError}) carrying the deciding policy ids.
   */
  evaluateTask(
    agent: string | AgentLike,
    request: {
      resources: readonly { resource: string; scopes: readonly string[] }[];
      dataClassification?: Classification;
      goal?: string;
      ttlSeconds?: number;
    },
    options: RequestOptions = {},
  ): TaskDecision {
    const compiled = this.#compiled;
    const view = compiled.view(agentOf(agent));
    const asked = request.resources.map(({ resource: name, scopes }) => {
      const resource = compiled.resource(name);
      if (!resource) throw new PolicyDeniedError(`unknown resource ${name}`);
      checkScopesExist(name, scopes, resource);
      return { resource, scopes: [...new Set(scopes)] };
    });
    const highestResource = asked.reduce(
      (highest, { resource }) =>
        classificationRank(resource.classification) > classificationRank(highest)
          ? resource.classification
          : highest,
      "public" as Classification,
    );
    const dataClassification = request.dataClassification ?? highestResource;
    if (classificationRank(dataClassification) < classificationRank(highestResource)) {
      throw new PolicyDeniedError(
        `dataClassification ${dataClassification} is below the ${highestResource} data of the requested resources`,
      );
    }
    const now = this.#clock.now();
    const granted = asked.map(({ resource, scopes }) => {
      const facts: RequestFacts = {
        task: {
          goal: request.goal ?? "",
          resources: asked.map((entry) => entry.resource.name),
          scopes,
          classification: dataClassification,
          ageSeconds: 0,
          ...(request.ttlSeconds !== undefined ? { ttlSeconds: request.ttlSeconds } : {}),
        },
        scopes,
        now,
        ...sourceOf(options),
      };
      const decision = this.#decide(compiled, "createTask", view, resource, facts);
      const { rule, viaRule } = this.#grantingRule(compiled, decision, view, resource, facts);
      return {
        resource: resource.name,
        scopes,
        ...(resource.owner ? { owner: resource.owner } : {}),
        rule,
        viaRule,
        policyIds: decision.policyIds,
      };
    });
    const autoApprove = granted.every(({ rule, viaRule }) => viaRule && rule.autoApprove);
    return {
      resources: granted.map(({ viaRule: _, ...entry }) => entry),
      dataClassification,
      autoApprove,
      approvedBy: autoApprove
        ? `policy:${[...new Set(granted.map(({ rule }) => this.ruleName(rule)))].join(",")}`
        : undefined,
      policyIds: [...new Set(granted.flatMap(({ policyIds }) => policyIds))].sort(),
    };
  }

  /**
   * Decides a lease at request time, against the policy as it is now (not as it was when
   * the task was approved). Throws {@link PolicyDenialError}.
   */
  evaluateLease(
    agent: string | AgentLike,
    task: TaskLike,
    request: { resource: string; scopes?: readonly string[]; ttlSeconds?: number },
    options: RequestOptions = {},
  ): LeaseDecision {
    return this.#evaluateCredential("mint", agentOf(agent), task, request, options);
  }

  /**
   * Decides a delegation (token exchange) of a task's credential to another agent (`actor`,
   * `context.actor` in Cedar): the same checks as a mint, asked as `delegate`.
   */
  evaluateDelegation(
    agent: string | AgentLike,
    task: TaskLike,
    request: { resource: string; scopes?: readonly string[]; ttlSeconds?: number; actor: string },
    options: RequestOptions = {},
  ): LeaseDecision {
    return this.#evaluateCredential("delegate", agentOf(agent), task, request, options);
  }

  /**
   * Whether the policy in force still permits a live lease: Cedar is asked `introspect` with
   * the lease's scopes and what is left of its lifetime. For introspection, and after a
   * reload for every live lease (revoke those not allowed, reason `policy`). The agent is
   * rebuilt from the task (its id, owner and recorded claims) unless one is given. Pure:
   * reads the clock and the policy in force, changes nothing.
   */
  stillPermitted(
    lease: LeaseLike,
    task: TaskLike,
    agent?: AgentLike,
    options: RequestOptions = {},
  ): PolicyCheck {
    const subject = agent ?? {
      id: task.agentId ?? "",
      ...(task.agentOwner !== undefined ? { owner: task.agentOwner } : {}),
      ...(task.agentClaims !== undefined ? { claims: task.agentClaims } : {}),
    };
    const remainingMs = Date.parse(lease.expiresAt) - this.#clock.now();
    try {
      const decision = this.#evaluateCredential(
        "introspect",
        subject,
        task,
        {
          resource: lease.resource,
          scopes: lease.scopes,
          ttlSeconds: Math.max(0, Math.ceil(remainingMs / 1000)),
        },
        options,
      );
      return {
        allowed: true,
        reason: `permitted by ${decision.policyIds.join(", ")}`,
        policyIds: decision.policyIds,
      };
    } catch (error) {
      if (!(error instanceof PolicyDeniedError)) throw error;
      return {
        allowed: false,
        reason: error.reason,
        policyIds: error instanceof PolicyDenialError ? [...error.policyIds] : [],
      };
    }
  }

  /**
   * The agent's claims a new task should record (as `agentClaims`), so introspection and the
   * re-check after a reload judge it on what the agent presented: the claims policies can
   * see, those the deciding rules name first, bounded to 4 KiB.
   */
  claimsToRecord(agent: AgentLike, decision?: TaskDecision): Record<string, ClaimValue> {
    const named = (decision?.resources ?? []).flatMap(({ rule }) => Object.keys(rule.claims ?? {}));
    return claimsToRecord(agent.claims, this.#compiled.declaredClaims, named);
  }

  #evaluateCredential(
    action: Exclude<PolicyAction, "createTask">,
    agent: AgentLike,
    task: TaskLike,
    request: { resource: string; scopes?: readonly string[]; ttlSeconds?: number; actor?: string },
    options: RequestOptions,
  ): LeaseDecision {
    const compiled = this.#compiled;
    const declared = task.resources.find((entry) => entry.resource === request.resource);
    if (!declared) throw new PolicyDeniedError(`resource ${request.resource} is not part of the task`);
    const resource = compiled.resource(request.resource);
    if (!resource) throw new PolicyDeniedError(`unknown resource ${request.resource}`);
    const scopes = [...new Set(request.scopes ?? declared.scopes)];
    const notApproved = scopes.filter((scope) => !declared.scopes.includes(scope));
    if (notApproved.length > 0)
      throw new PolicyDeniedError(`scopes ${notApproved.join(", ")} were not approved for the task`);
    checkScopesExist(request.resource, scopes, resource);
    // The resource's data may have been reclassified since the task was approved.
    if (classificationRank(resource.classification) > classificationRank(task.dataClassification)) {
      throw new PolicyDeniedError(
        `${request.resource} now holds ${resource.classification} data, above the task's ${task.dataClassification}`,
      );
    }
    const view = compiled.view(agent);
    const applicable = compiled.ruleFor(view, resource.name)?.rule;
    const defaultTtl = Math.min(applicable?.maxTtlSeconds ?? resource.maxTtlSeconds, resource.maxTtlSeconds);
    if (request.ttlSeconds !== undefined && request.ttlSeconds > resource.maxTtlSeconds) {
      throw new PolicyDeniedError(`ttlSeconds ${request.ttlSeconds} exceeds the maximum of ${defaultTtl}`);
    }
    const ttlSeconds = request.ttlSeconds ?? defaultTtl;
    const now = this.#clock.now();
    const facts: RequestFacts = {
      task: taskFacts(task, declared.scopes, now),
      scopes,
      ttlSeconds,
      now,
      ...sourceOf(options),
      ...(request.actor !== undefined ? { actor: request.actor } : {}),
    };
    const decision = this.#decide(compiled, action, view, resource, facts);
    const { rule, viaRule } = this.#grantingRule(compiled, decision, view, resource, facts);
    // A grant by `.cedar` permits alone has no rule maximum: the lifetime it approved is the limit.
    return { scopes, maxTtlSeconds: viaRule ? defaultTtl : ttlSeconds, rule, policyIds: decision.policyIds };
  }

  #decide(
    compiled: CompiledPolicy,
    action: PolicyAction,
    view: AgentView,
    resource: ResourceConfig,
    facts: RequestFacts,
  ): CedarDecision {
    const decision = compiled.authorize(action, view, resource.name, facts);
    if (decision.allowed) return decision;
    if (decision.erroredForbids.length > 0) {
      throw new PolicyDenialError(
        `policy ${decision.erroredForbids.join(", ")} could not be evaluated; denied to be safe`,
        decision.policyIds,
      );
    }
    if (decision.policyIds.length > 0) {
      throw new PolicyDenialError(`forbidden by policy ${decision.policyIds.join(", ")}`, decision.policyIds);
    }
    throw new PolicyDenialError(explainDefaultDeny(compiled, action, view, resource, facts));
  }

  /** The YAML rule among the permits that held, or a stand-in for `.cedar` permits. */
  #grantingRule(
    compiled: CompiledPolicy,
    decision: CedarDecision,
    view: AgentView,
    resource: ResourceConfig,
    facts: RequestFacts,
  ): { rule: PolicyRule; viaRule: boolean } {
    for (const id of decision.policyIds) {
      const compiledRule = compiled.ruleById(id);
      if (compiledRule) return { rule: compiledRule.rule, viaRule: true };
    }
    return {
      viaRule: false,
      rule: {
        name: `cedar:${decision.policyIds.join(",")}`,
        agents: [view.agent.id],
        resources: [resource.name],
        scopes: [...facts.scopes],
        maxClassification: facts.task.classification,
        autoApprove: false,
        maxTtlSeconds: facts.ttlSeconds ?? resource.maxTtlSeconds,
      },
    };
  }

  #nameRules(compiled: CompiledPolicy): void {
    for (const { rule, id } of compiled.rules) this.#ruleNames.set(rule, id);
  }
}

/**
 * Words a denial no forbid decided: nothing permitted. The first rule that applies is the
 * only YAML permit that could have held, so its limits say which check failed.
 */
function explainDefaultDeny(
  compiled: CompiledPolicy,
  action: PolicyAction,
  view: AgentView,
  resource: ResourceConfig,
  facts: RequestFacts,
): string {
  const name = resource.name;
  const rule = compiled.ruleFor(view, name)?.rule;
  if (!rule) return `no rule allows ${view.agent.id} to use ${name}${action === "createTask" ? "" : " now"}`;
  const denied = facts.scopes.filter((scope) => !rule.scopes.includes(scope));
  if (denied.length > 0) return `scope ${denied.join(", ")} on ${name} is not allowed`;
  if (classificationRank(facts.task.classification) > classificationRank(rule.maxClassification)) {
    return `classification ${facts.task.classification} exceeds ${rule.maxClassification} allowed for ${name}`;
  }
  const maxTtl = Math.min(rule.maxTtlSeconds, resource.maxTtlSeconds);
  if (action !== "createTask" && facts.ttlSeconds !== undefined && facts.ttlSeconds > maxTtl) {
    return `ttlSeconds ${facts.ttlSeconds} exceeds the maximum of ${maxTtl}`;
  }
  return `no policy permits ${action} on ${name} for ${view.agent.id}`;
}

function checkScopesExist(name: string, scopes: readonly string[], resource: ResourceConfig): void {
  if (scopes.length === 0) throw new PolicyDeniedError(`no scopes requested for ${name}`);
  const unknown = scopes.filter((scope) => !resource.scopes.includes(scope));
  if (unknown.length > 0) throw new PolicyDeniedError(`${name} has no scope ${unknown.join(", ")}`);
}

function agentOf(agent: string | AgentLike): AgentLike {
  return typeof agent === "string" ? { id: agent } : agent;
}

function sourceOf(options: RequestOptions): Pick<RequestFacts, "sourceAddress"> {
  return options.sourceAddress !== undefined ? { sourceAddress: options.sourceAddress } : {};
}

function taskFacts(task: TaskLike, scopes: readonly string[], now: number): TaskFacts {
  const createdAt = task.createdAt ? Date.parse(task.createdAt) : Number.NaN;
  const expiresAt = task.expiresAt ? Date.parse(task.expiresAt) : Number.NaN;
  return {
    ...(task.id !== undefined ? { id: task.id } : {}),
    goal: task.goal ?? "",
    resources: task.resources.map(({ resource }) => resource),
    scopes,
    classification: task.dataClassification,
    ...(task.approvedBy !== undefined ? { approver: task.approvedBy } : {}),
    ageSeconds: Number.isNaN(createdAt) ? 0 : (now - createdAt) / 1000,
    ...(!Number.isNaN(createdAt) && !Number.isNaN(expiresAt)
      ? { ttlSeconds: (expiresAt - createdAt) / 1000 }
      : {}),
  };
}
