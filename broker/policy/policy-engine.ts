import {
  CLASSIFICATIONS,
  type Classification,
  type Config,
  type PolicyRule,
  type ResourceConfig,
} from "../config.ts";
import { PolicyDeniedError } from "../errors.ts";

/** Orders classifications: public < internal < confidential < restricted. */
export function classificationRank(classification: Classification): number {
  return CLASSIFICATIONS.indexOf(classification);
}

/** Matches an agent id against a rule glob where `*` is any run of characters. */
export function agentGlobMatches(glob: string, agentId: string): boolean {
  const pattern = glob
    .split("*")
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
    .join(".*");
  return new RegExp(`^${pattern}$`).test(agentId);
}

/** A task request after policy: what was granted and whether a rule approved it. */
export interface TaskDecision {
  resources: { resource: string; scopes: string[]; owner?: string; rule: PolicyRule }[];
  dataClassification: Classification;
  autoApprove: boolean;
  /** The rules that approved it, for the audit trail. */
  approvedBy?: string;
}

/** A lease request after policy. */
export interface LeaseDecision {
  scopes: string[];
  /** The longest lease the rule and resource allow now. */
  maxTtlSeconds: number;
  rule: PolicyRule;
}

/**
 * Evaluates the configured rules. The first rule whose agent glob matches and which names
 * the resource applies; anything it does not allow is denied with a reason.
 */
export class PolicyEngine {
  readonly #resources: Map<string, ResourceConfig>;

  constructor(private readonly config: Pick<Config, "resources" | "policies">) {
    this.#resources = new Map(config.resources.map((resource) => [resource.name, resource]));
  }

  resource(name: string): ResourceConfig | undefined {
    return this.#resources.get(name);
  }

  /** The first rule for this agent and resource. */
  ruleFor(agentId: string, resource: string): PolicyRule | undefined {
    return this.config.policies.find(
      (rule) =>
        rule.resources.includes(resource) && rule.agents.some((glob) => agentGlobMatches(glob, agentId)),
    );
  }

  /** Decides a new task. Throws {@link PolicyDeniedError}. */
  evaluateTask(
    agentId: string,
    request: { resources: { resource: string; scopes: string[] }[]; dataClassification?: Classification },
  ): TaskDecision {
    const granted = request.resources.map(({ resource: name, scopes }) => {
      const resource = this.#resources.get(name);
      if (!resource) throw new PolicyDeniedError(`unknown resource ${name}`);
      const rule = this.ruleFor(agentId, name);
      if (!rule) throw new PolicyDeniedError(`no rule allows ${agentId} to use ${name}`);
      this.checkScopes(name, scopes, resource, rule);
      return { resource: name, scopes: [...new Set(scopes)], owner: resource.owner, rule };
    });
    const highestResource = granted.reduce((highest, { resource }) => {
      const classification = this.#resources.get(resource)?.classification ?? "public";
      return classificationRank(classification) > classificationRank(highest) ? classification : highest;
    }, "public" as Classification);
    const dataClassification = request.dataClassification ?? highestResource;
    if (classificationRank(dataClassification) < classificationRank(highestResource)) {
      throw new PolicyDeniedError(
        `dataClassification ${dataClassification} is below the ${highestResource} data of the requested resources`,
      );
    }
    for (const { resource, rule } of granted) this.checkClassification(resource, dataClassification, rule);
    const autoApprove = granted.every(({ rule }) => rule.autoApprove);
    return {
      resources: granted,
      dataClassification,
      autoApprove,
      approvedBy: autoApprove
        ? `policy:${[...new Set(granted.map(({ rule }) => this.ruleName(rule)))].join(",")}`
        : undefined,
    };
  }

  /**
   * Decides a lease at request time, against the rules as they are now (not as they were
   * when the task was approved). Throws {@link PolicyDeniedError}.
   */
  evaluateLease(
    agentId: string,
    task: { resources: { resource: string; scopes: string[] }[]; dataClassification: Classification },
    request: { resource: string; scopes?: string[]; ttlSeconds?: number },
  ): LeaseDecision {
    const declared = task.resources.find((entry) => entry.resource === request.resource);
    if (!declared) throw new PolicyDeniedError(`resource ${request.resource} is not part of the task`);
    const resource = this.#resources.get(request.resource);
    if (!resource) throw new PolicyDeniedError(`unknown resource ${request.resource}`);
    const rule = this.ruleFor(agentId, request.resource);
    if (!rule) throw new PolicyDeniedError(`no rule allows ${agentId} to use ${request.resource} now`);
    const scopes = request.scopes ?? declared.scopes;
    const notApproved = scopes.filter((scope) => !declared.scopes.includes(scope));
    if (notApproved.length > 0)
      throw new PolicyDeniedError(`scopes ${notApproved.join(", ")} were not approved for the task`);
    this.checkScopes(request.resource, scopes, resource, rule);
    // The resource's data may have been reclassified since the task was approved.
    if (classificationRank(resource.classification) > classificationRank(task.dataClassification)) {
      throw new PolicyDeniedError(
        `${request.resource} now holds ${resource.classification} data, above the task's ${task.dataClassification}`,
      );
    }
    this.checkClassification(request.resource, task.dataClassification, rule);
    const maxTtlSeconds = Math.min(rule.maxTtlSeconds, resource.maxTtlSeconds);
    if (request.ttlSeconds !== undefined && request.ttlSeconds > maxTtlSeconds) {
      throw new PolicyDeniedError(`ttlSeconds ${request.ttlSeconds} exceeds the maximum of ${maxTtlSeconds}`);
    }
    return { scopes: [...new Set(scopes)], maxTtlSeconds, rule };
  }

  ruleName(rule: PolicyRule): string {
    return rule.name ?? `#${this.config.policies.indexOf(rule)}`;
  }

  private checkScopes(name: string, scopes: string[], resource: ResourceConfig, rule: PolicyRule): void {
    if (scopes.length === 0) throw new PolicyDeniedError(`no scopes requested for ${name}`);
    const unknown = scopes.filter((scope) => !resource.scopes.includes(scope));
    if (unknown.length > 0) throw new PolicyDeniedError(`${name} has no scope ${unknown.join(", ")}`);
    const denied = scopes.filter((scope) => !rule.scopes.includes(scope));
    if (denied.length > 0)
      throw new PolicyDeniedError(`scope ${denied.join(", ")} on ${name} is not allowed`);
  }

  private checkClassification(name: string, classification: Classification, rule: PolicyRule): void {
    if (classificationRank(classification) > classificationRank(rule.maxClassification)) {
      throw new PolicyDeniedError(
        `classification ${classification} exceeds ${rule.maxClassification} allowed for ${name}`,
      );
    }
  }
}
