import { isIP } from "node:net";
import type { Context, EntityJson } from "@cedar-policy/cedar-wasm/nodejs";
import { CLASSIFICATIONS, type Classification, type ResourceConfig } from "../config.ts";
import type { AgentClaims } from "../identity/principal.ts";
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

export function agentEntity(agent: AgentLike, claims: DeclaredClaimValues): EntityJson {
  return {
    uid: { type: AGENT_TYPE, id: agent.id },
    attrs: {
      id: agent.id,
      issuer: issuerOf(agent),
      ...(agent.owner !== undefined ? { owner: agent.owner } : {}),
      claims: cedarClaims(claims),
    },
    parents: [],
  };
}

export function resourceEntity(resource: ResourceConfig): EntityJson {
  return {
    uid: { type: RESOURCE_TYPE, id: resource.name },
    attrs: {
      name: resource.name,
      adapter: resource.adapter,
      classification: resource.classification,
      classificationRank: classificationRank(resource.classification),
      ...(resource.owner !== undefined ? { owner: resource.owner } : {}),
      tags: [...(resource.tags ?? [])],
      scopes: [...resource.scopes],
      maxTtlSeconds: resource.maxTtlSeconds,
    },
    parents: [],
  };
}

export function requestContext(facts: RequestFacts): Context {
  const { task } = facts;
  const address = cedarAddress(facts.sourceAddress);
  return {
    task: {
      ...(task.id !== undefined ? { id: task.id } : {}),
      goal: task.goal,
      resources: [...task.resources],
      scopes: [...task.scopes],
      classification: task.classification,
      classificationRank: classificationRank(task.classification),
      ...(task.approver !== undefined ? { approver: task.approver } : {}),
      ageSeconds: Math.max(0, Math.floor(task.ageSeconds)),
      ...(task.ttlSeconds !== undefined ? { ttlSeconds: Math.floor(task.ttlSeconds) } : {}),
    },
    scopes: [...facts.scopes],
    ...(facts.ttlSeconds !== undefined ? { ttlSeconds: Math.floor(facts.ttlSeconds) } : {}),
    now: Math.floor(facts.now / 1000),
    time: { __extn: { fn: "datetime", arg: new Date(facts.now).toISOString() } },
    ...(address !== undefined ? { sourceAddress: { __extn: { fn: "ip", arg: address } } } : {}),
    ...(facts.actor !== undefined ? { actor: facts.actor } : {}),
  };
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
