/**
 * Benchmark: Cedar policy decisions on one core, no I/O. Compares a preparsed policy set
 * (`preparsePolicySet` + `statefulIsAuthorized`, what the broker does) with parsing the policy
 * text on every call (`isAuthorized`), then times the engine's whole mint decision (TypeScript
 * checks + Cedar) with 10 and 50 YAML rules. Run with
 * `node --import tsx bench/policy-decisions.bench.ts` (BENCH_SECONDS per case, default 2).
 */
import { performance } from "node:perf_hooks";
import type { AuthorizationAnswer } from "@cedar-policy/cedar-wasm/nodejs";
import type { PolicyRule, ResourceConfig } from "../broker/config.ts";
import { agentEntity, requestContext, resourceEntity } from "../broker/policy/cedar-request.ts";
import { ACTION_TYPE, AGENT_TYPE, RESOURCE_TYPE } from "../broker/policy/cedar-schema.ts";
import { isAuthorized, preparsePolicySet, statefulIsAuthorized } from "../broker/policy/cedar-wasm.ts";
import type { CompiledPolicy } from "../broker/policy/compiled-policy.ts";
import { PolicyEngine } from "../broker/policy/policy-engine.ts";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);

const resources: ResourceConfig[] = Array.from({ length: 10 }, (_, i) => ({
  name: `api-${i}`,
  adapter: "jwt",
  classification: i % 2 ? "confidential" : "internal",
  scopes: ["read", "write"],
  maxTtlSeconds: 900,
  options: {},
  tags: i % 3 ? [] : ["pii"],
}));

/**
 * `count` rules over the catalog, a third of them with claims conditions; the agent's comes
 * last. Each names two resources, or with `everyResource` also api-5, the one asked for.
 */
function rules(count: number, everyResource = false): PolicyRule[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `rule-${i}`,
    agents: i === count - 1 ? ["ci:repo:acme/*"] : [`ci:repo:team-${i}/*`, `k8s:ns-${i}:*`],
    resources: [
      ...new Set([
        `api-${i % 10}`,
        `api-${(i + 3) % 10}`,
        ...(everyResource || i === count - 1 ? ["api-5"] : []),
      ]),
    ],
    scopes: ["read", "write"],
    maxClassification: "confidential",
    autoApprove: i % 2 === 0,
    maxTtlSeconds: 600,
    ...(i % 3 === 0 || i === count - 1
      ? {
          claims: {
            repository: i === count - 1 ? "acme/*" : `team-${i}/*`,
            ref: ["refs/heads/main", "refs/tags/v*"],
          },
        }
      : {}),
  }));
}

const cedarFiles = [
  {
    path: "operators.cedar",
    text: `@id("office-hours")
forbid (principal, action == Jitkey::Action::"mint", resource)
when { resource.classificationRank >= 3 }
unless { context.time.toTime() >= duration("9h") && context.time.toTime() < duration("17h") };

@id("pii-office-network")
forbid (principal, action == Jitkey::Action::"mint", resource)
when { resource.tags.contains("pii") }
unless { context has sourceAddress && context.sourceAddress.isInRange(ip("10.0.0.0/8")) };

@id("no-untrusted")
forbid (principal, action, resource)
when { principal.claims has ref && principal.claims.ref like "refs/pull/*" };
`,
  },
];

const agent = {
  id: "ci:repo:acme/app",
  issuer: "ci",
  claims: { repository: "acme/app", ref: "refs/heads/main" },
};
const task = {
  id: "tsk_bench",
  agentId: agent.id,
  goal: "nightly export",
  resources: [{ resource: "api-5", scopes: ["read"] }],
  dataClassification: "confidential" as const,
  approvedBy: "policy:rule-9",
  createdAt: new Date(Date.now() - 60_000).toISOString(),
  expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
};

/**
 * Runs `decide` for SECONDS; returns decisions per second of this process's CPU time (what
 * one core gives, even on a shared machine) and per second of wall time.
 */
function rate(decide: () => boolean): { cpu: number; wall: number } {
  for (let i = 0; i < 200; i += 1) if (!decide()) throw new Error("the benchmark request was denied");
  let count = 0;
  const start = performance.now();
  const cpuStart = process.cpuUsage();
  while (performance.now() < start + SECONDS * 1000) {
    for (let i = 0; i < 100; i += 1) decide();
    count += 100;
  }
  const cpu = process.cpuUsage(cpuStart);
  return { cpu: count / ((cpu.user + cpu.system) / 1e6), wall: count / ((performance.now() - start) / 1000) };
}

function report(name: string, { cpu, wall }: { cpu: number; wall: number }): void {
  const format = (n: number) => Math.round(n).toLocaleString("en-US").padStart(7);
  process.stdout.write(`${name.padEnd(66)}${format(cpu)} /cpu-s ${format(wall)} /s\n`);
}

function main(): void {
  const options = { cedarFiles, clock: { now: () => Date.UTC(2025, 5, 2, 10) } };
  const engine = (policies: PolicyRule[]) =>
    new PolicyEngine({ resources, policies, policyClaims: { ref: "string" } }, options);
  const ten = engine(rules(10));
  const compiled: CompiledPolicy = ten.compiled;
  const resource = "api-5";
  const view = compiled.view(agent);
  const facts = {
    task: {
      goal: task.goal,
      resources: [resource],
      scopes: ["read"],
      classification: task.dataClassification,
      ageSeconds: 60,
    },
    scopes: ["read"],
    ttlSeconds: 300,
    now: Date.UTC(2025, 5, 2, 10),
    sourceAddress: "10.1.2.3",
  };
  process.stdout.write(
    `policy decisions, one thread, ${SECONDS} s per case (node ${process.version}; 10 rules + 3 .cedar = ${compiled.sources.length} policies)\n`,
  );
  // cedar-wasm's functions start in V8's baseline wasm tier and move up once hot: warm up first.
  const warmUntil = performance.now() + 1500;
  while (performance.now() < warmUntil) compiled.authorize("mint", view, resource, facts);
  report(
    "preparsed slice, pruned request (CompiledPolicy.authorize)",
    rate(() => compiled.authorize("mint", view, resource, facts).allowed),
  );

  // The same decision without slicing and pruning: the whole set, every attribute.
  const text = compiled.text();
  preparsePolicySet("bench-whole-set", { staticPolicies: text });
  const unpruned = {
    principal: { type: AGENT_TYPE, id: agent.id },
    action: { type: ACTION_TYPE, id: "mint" },
    resource: { type: RESOURCE_TYPE, id: resource },
    entities: [
      agentEntity(agent, view.claims),
      resourceEntity(compiled.resource(resource) as ResourceConfig),
    ],
  };
  const allowed = (answer: AuthorizationAnswer) =>
    answer.type === "success" && answer.response.decision === "allow";
  report(
    "preparsed whole set, full request (statefulIsAuthorized)",
    rate(() =>
      allowed(
        statefulIsAuthorized({
          ...unpruned,
          context: requestContext(facts),
          preparsedPolicySetId: "bench-whole-set",
        }),
      ),
    ),
  );
  // What a broker that did not preparse would do: the policy text parsed on every call.
  report(
    "whole set parsed per call, full request (isAuthorized)",
    rate(() =>
      allowed(
        isAuthorized({ ...unpruned, context: requestContext(facts), policies: { staticPolicies: text } }),
      ),
    ),
  );

  const mint = (policy: PolicyEngine) => () =>
    policy.evaluateLease(agent, task, { resource, ttlSeconds: 300 }, { sourceAddress: "10.1.2.3" }).scopes
      .length > 0;
  report("whole mint decision (PolicyEngine.evaluateLease), 10 rules", rate(mint(ten)));
  report("whole mint decision, 50 rules (about 11 name the resource)", rate(mint(engine(rules(50)))));
  report("whole mint decision, 50 rules that all name the resource", rate(mint(engine(rules(50, true)))));
}

main();
