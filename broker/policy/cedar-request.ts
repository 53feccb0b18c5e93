import { isIP } from "node:net";
import type { CedarValueJson, Context, EntityJson } from "@cedar-policy/cedar-wasm/nodejs";
import { CLASSIFICATIONS, type Classification, type ResourceConfig } from "../config.ts";
import type { AgentClaims } from "../identity/principal.ts";
import { AttributeUse } from "./attribute-use.ts";
import { AGENT_TYPE, RESOURCE_TYPE } from "./cedar-schema.ts";
import { cedarClaims, type DeclaredClaimValues } from "./claims.ts";

/** The agent a decision is about: a verified principal, or what a task recorded of one. */
export interface AgentLike {
  id: string;
  /** The issuer's configured name; taken from the id's prefix when absent. */
  issuer?: string;
  owner?: string;
  claims?: AgentClaims;
}

/** The task a decision is about, as the `context.task` record sees it. */
export interface TaskFacts {
  id?: string;
  goal: string;
  resources: readonly string[];
  scopes: readonly string[];
  classification: Classification;
  approver?: string;
  ageSeconds: number;
  ttlSeconds?: number;
}

/** Everything about one request besides the agent and the resource. */
export interface RequestFacts {
  task: TaskFacts;
  scopes: readonly string[];
  ttlSeconds?: number;
  /** Request time, milliseconds since the epoch (the broker's clock). */
  now: number;
  sourceAddress?: string;
  actor?: string;
}

/** Orders classifications: public < internal < confidential < restricted. */
export function classificationRank(classification: Classification): number {
  return CLASSIFICATIONS.indexOf(classification);
}

/** The issuer part of an agent id (`ci` of `ci:repo:acme/app`). */
export function issuerOf(agent: AgentLike): string {
  return agent.issuer ?? agent.id.slice(0, Math.max(0, agent.id.indexOf(":")));
}

/** Keeps the fields of `values` the policies read under `prefix`. */
function pick(
  use: AttributeUse,
  prefix: string,
  values: Record<string, CedarValueJson | undefined>,
): Record<string, CedarValueJson> {
  const kept: Record<string, CedarValueJson> = {};
  for (const [name, value] of Object.entries(values)) {
    if (value !== undefined && use.needs(`${prefix}.${name}`)) kept[name] = value;
  }
  return kept;
}

export function agentEntity(
  agent: AgentLike,
  claims: DeclaredClaimValues,
  use: AttributeUse = AttributeUse.everything(),
): EntityJson {
  return {
    uid: { type: AGENT_TYPE, id: agent.id },
    attrs: pick(use, "principal", {
      id: agent.id,
      issuer: use.needs("principal.issuer") ? issuerOf(agent) : undefined,
      owner: agent.owner,
      claims: use.needs("principal.claims") ? pick(use, "principal.claims", cedarClaims(claims)) : undefined,
    }),
    parents: [],
  };
}

export function resourceEntity(
  resource: ResourceConfig,
  use: AttributeUse = AttributeUse.everything(),
): EntityJson {
  return {
    uid: { type: RESOURCE_TYPE, id: resource.name },
    attrs: pick(use, "resource", {
      name: resource.name,
      adapter: resource.adapter,
      classification: resource.classification,
      classificationRank: classificationRank(resource.classification),
      owner: resource.owner,
      tags: [...(resource.tags ?? [])],
      scopes: [...resource.scopes],
      maxTtlSeconds: resource.maxTtlSeconds,
    }),
    parents: [],
  };
}

export function requestContext(facts: RequestFacts, use: AttributeUse = AttributeUse.everything()): Context {
  const { task } = facts;
  const address = use.needs("context.sourceAddress") ? cedarAddress(facts.sourceAddress) : undefined;
  return pick(use, "context", {
    task: use.needs("context.task")
      ? pick(use, "context.task", {
          id: task.id,
          goal: task.goal,
          resources: [...task.resources],
          scopes: [...task.scopes],
          classification: task.classification,
          classificationRank: classificationRank(task.classification),
          approver: task.approver,
          ageSeconds: Math.max(0, Math.floor(task.ageSeconds)),
          ttlSeconds: task.ttlSeconds !== undefined ? Math.floor(task.ttlSeconds) : undefined,
        })
      : undefined,
    scopes: [...facts.scopes],
    ttlSeconds: facts.ttlSeconds !== undefined ? Math.floor(facts.ttlSeconds) : undefined,
    now: Math.floor(facts.now / 1000),
    time: use.needs("context.time")
      ? { __extn: { fn: "datetime", arg: new Date(facts.now).toISOString() } }
      : undefined,
    sourceAddress: address !== undefined ? { __extn: { fn: "ip", arg: address } } : undefined,
    actor: facts.actor,
  });
}

/**
 * An address as Cedar's `ip()` takes it, or `undefined` when it is not one. Node reports an
 * IPv4 client on a dual-stack socket as `::ffff:a.b.c.d`, which Cedar refuses: the IPv4
 * address is what policies mean.
 */
export function cedarAddress(address: string | undefined): string | undefined {
  if (!address) return undefined;
  const unzoned = address.replace(/%.*$/, "");
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(unzoned)?.[1];
  const candidate = mapped ?? unzoned;
  return isIP(candidate) === 0 ? undefined : candidate;
}
