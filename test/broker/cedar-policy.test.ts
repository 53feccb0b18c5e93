import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "chai";
import { parse as parseYaml } from "yaml";
import { ManualClock } from "../../broker/clock.ts";
import type { ClaimType, Classification, PolicyRule } from "../../broker/config.ts";
import { PolicyDeniedError } from "../../broker/errors.ts";
import { readCedarFiles } from "../../broker/policy/cedar-files.ts";
import { agentEntity, requestContext, resourceEntity } from "../../broker/policy/cedar-request.ts";
import {
  checkParseContext,
  checkParseEntities,
  checkParseSchema,
  policyToJson,
} from "../../broker/policy/cedar-wasm.ts";
import { CompiledPolicy } from "../../broker/policy/compiled-policy.ts";
import {
  type AgentLike,
  type PolicyConfig,
  PolicyEngine,
  type TaskDecision,
} from "../../broker/policy/policy-engine.ts";
import { PolicyLoadError } from "../../broker/policy/policy-errors.ts";
import { allowSurvivesShorterTtl } from "../../broker/policy/shrinking-ttl.ts";
import {
  catalogEntry,
  cedarFixture,
  deniedBy,
  POLICY_FIXTURES,
  policyDenial,
  yamlRule,
} from "../fixtures/policy/builders.ts";

const CI_MAIN = {
  id: "ci:repo:acme/app:ref:refs/heads/main",
  issuer: "ci",
  claims: {
    repository: "acme/app",
    ref: "refs/heads/main",
    job_workflow_ref: "acme/app/.github/workflows/deploy.yml@refs/heads/main",
  },
};

/** A task as stored after approval, for lease decisions. */
function approvedTask(resource: string, scopes: string[], dataClassification: Classification = "internal") {
  return {
    id: "tsk_1",
    agentId: CI_MAIN.id,
    goal: "deploy",
    resources: [{ resource, scopes }],
    dataClassification,
    approvedBy: "operator:alice",
    createdAt: new Date(Date.now() - 60_000).toISOString(),
    expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
  };
}

/** Expects a load to be refused and returns the message. */
function loadRefusal(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(error).to.be.instanceOf(PolicyLoadError);
    return (error as PolicyLoadError).message;
  }
  throw new Error("expected the policy to be refused");
}

describe("Cedar policy engine", () => {
  const vault = catalogEntry("vault", { classification: "restricted", tags: ["office-only"] });
  const catalog = [catalogEntry("api"), catalogEntry("db", { classification: "confidential" }), vault];

  describe("decisions and their policy ids", () => {
    const config: PolicyConfig = {
      resources: catalog,
      policyClaims: { job_workflow_ref: "string" },
      policies: [
        yamlRule({ name: "read-api", agents: ["ci:*"], resources: ["api"], autoApprove: true }),
        yamlRule({
          name: "secrets",
          agents: ["ci:*"],
          resources: ["vault"],
          scopes: ["read", "write"],
          maxClassification: "restricted",
        }),
      ],
    };

    it("names the rule that permitted a task and a lease", () => {
      const engine = new PolicyEngine(config);
      const task = engine.evaluateTask(CI_MAIN, { resources: [{ resource: "api", scopes: ["read"] }] });
      expect(task.policyIds).to.deep.equal(["read-api"]);
      expect(task.resources[0]?.policyIds).to.deep.equal(["read-api"]);
      const lease = engine.evaluateLease(CI_MAIN, approvedTask("api", ["read"]), { resource: "api" });
      expect(lease.policyIds).to.deep.equal(["read-api"]);
      expect(lease.maxTtlSeconds).to.equal(300);
      expect(engine.ruleName(lease.rule)).to.equal("read-api");
    });

    it("denies by default when no policy permits, naming no policy", () => {
      const engine = new PolicyEngine(config);
      const denied = policyDenial(() =>
        engine.evaluateTask("gh:someone", { resources: [{ resource: "api", scopes: ["read"] }] }),
      );
      expect(deniedBy(denied)).to.deep.equal([]);
      expect(denied.reason).to.include("no rule allows gh:someone");
    });

    it("lets a .cedar forbid win over a YAML permit, naming the forbid", async () => {
      const engine = new PolicyEngine(config, { cedarFiles: [await cedarFixture("forbid-actor.cedar")] });
      const untrusted = {
        ...CI_MAIN,
        claims: {
          ...CI_MAIN.claims,
          job_workflow_ref: "acme/app/.github/workflows/untrusted.yml@refs/pull/7",
        },
      };
      const request = { resources: [{ resource: "api", scopes: ["read"] }] };
      const denied = policyDenial(() => engine.evaluateTask(untrusted, request));
      expect(deniedBy(denied)).to.deep.equal(["no-untrusted-workflow"]);
      expect(denied.reason).to.include("no-untrusted-workflow");
      expect(engine.evaluateTask(CI_MAIN, request).autoApprove).to.equal(true);
    });

    it("forbids minting restricted data outside office hours by request time", async () => {
      const clock = new ManualClock(Date.UTC(2025, 5, 2, 8, 30));
      const engine = new PolicyEngine(config, {
        clock,
        cedarFiles: [await cedarFixture("office-hours.cedar")],
      });
      const task = approvedTask("vault", ["read"], "restricted");
      const early = policyDenial(() => engine.evaluateLease(CI_MAIN, task, { resource: "vault" }));
      expect(deniedBy(early)).to.deep.equal(["restricted-office-hours"]);
      // Creating the task is not minting: the forbid names mint only.
      expect(
        engine.evaluateTask(CI_MAIN, { resources: [{ resource: "vault", scopes: ["read"] }] }).policyIds,
      ).to.deep.equal(["secrets"]);
      clock.advance(60 * 60 * 1000);
      expect(engine.evaluateLease(CI_MAIN, task, { resource: "vault" }).policyIds).to.deep.equal(["secrets"]);
      clock.advance(8 * 60 * 60 * 1000);
      policyDenial(() => engine.evaluateLease(CI_MAIN, task, { resource: "vault" }));
    });

    it("forbids a mint from outside the office network by source address", async () => {
      const engine = new PolicyEngine(config, {
        clock: new ManualClock(Date.UTC(2025, 5, 2, 10)),
        cedarFiles: [await cedarFixture("forbid-actor.cedar")],
      });
      const task = approvedTask("vault", ["read"], "restricted");
      const mint = (sourceAddress?: string) =>
        engine.evaluateLease(CI_MAIN, task, { resource: "vault" }, sourceAddress ? { sourceAddress } : {});
      expect(mint("10.1.2.3").policyIds).to.deep.equal(["secrets"]);
      // Node's form of an IPv4 client on a dual-stack socket.
      expect(mint("::ffff:10.1.2.3").policyIds).to.deep.equal(["secrets"]);
      expect(deniedBy(policyDenial(() => mint("192.168.1.5")))).to.deep.equal(["office-network-only"]);
      expect(deniedBy(policyDenial(() => mint()))).to.deep.equal(["office-network-only"]);
      expect(deniedBy(policyDenial(() => mint("not an address")))).to.deep.equal(["office-network-only"]);
    });

    it("lets a .cedar permit grant what no rule does, for operator approval and the resource's TTL", () => {
      const engine = new PolicyEngine(config, {
        cedarFiles: [
          {
            path: "/etc/jitkey/db.cedar",
            text: `@id("dba-db")\npermit (principal, action, resource == Jitkey::Resource::"db")\nwhen { principal.issuer == "dba" && context.task.classificationRank <= 2 };\n`,
          },
        ],
      });
      const dba = { id: "dba:carol" };
      const task = engine.evaluateTask(dba, { resources: [{ resource: "db", scopes: ["write"] }] });
      expect(task.policyIds).to.deep.equal(["dba-db"]);
      expect(task.autoApprove).to.equal(false);
      expect(task.resources[0]?.rule.name).to.equal("cedar:dba-db");
      const lease = engine.evaluateLease(dba, approvedTask("db", ["write"], "confidential"), {
        resource: "db",
      });
      expect(lease).to.include({ maxTtlSeconds: 900 });
      expect(lease.policyIds).to.deep.equal(["dba-db"]);
      policyDenial(() =>
        engine.evaluateTask(dba, {
          resources: [{ resource: "db", scopes: ["write"] }],
          dataClassification: "restricted",
        }),
      );
    });

    it("denies when a forbid fails to evaluate, naming it", () => {
      const engine = new PolicyEngine(config, {
        cedarFiles: [
          {
            path: "overflow.cedar",
            text: `@id("overflows")\nforbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };\n`,
          },
        ],
      });
      const denied = policyDenial(() =>
        engine.evaluateTask(CI_MAIN, { resources: [{ resource: "api", scopes: ["read"] }] }),
      );
      expect(deniedBy(denied)).to.deep.equal(["overflows"]);
    });
  });

  describe("first match", () => {
    const config: PolicyConfig = {
      resources: catalog,
      policies: [
        yamlRule({ name: "db-only", agents: ["ci:*"], resources: ["db"], maxClassification: "confidential" }),
        yamlRule({ name: "narrow", agents: ["ci:team-a/*"], resources: ["api"] }),
        yamlRule({ name: "broad", agents: ["ci:*"], resources: ["api", "db"], scopes: ["read", "write"] }),
      ],
    };

    it("compiles each rule with an unless for every earlier rule sharing a resource", () => {
      const text = new PolicyEngine(config).policyText();
      const broad = text.slice(text.indexOf('@id("broad")'));
      expect(broad.match(/unless/g)).to.have.length(2);
      expect(broad).to.include('principal.id like "ci:team-a/*"');
      const narrow = text.slice(text.indexOf('@id("narrow")'), text.indexOf('@id("broad")'));
      // db-only names no resource of narrow's: it cannot shadow it.
      expect(narrow).to.not.include("unless");
    });

    it("lets only the first rule that applies permit, so a later broader rule cannot widen it", () => {
      const engine = new PolicyEngine(config);
      const teamA = { id: "ci:team-a/app" };
      const denied = policyDenial(() =>
        engine.evaluateTask(teamA, { resources: [{ resource: "api", scopes: ["write"] }] }),
      );
      expect(deniedBy(denied)).to.deep.equal([]);
      expect(denied.reason).to.include("write");
      expect(
        engine.evaluateTask({ id: "ci:team-b/app" }, { resources: [{ resource: "api", scopes: ["write"] }] })
          .policyIds,
      ).to.deep.equal(["broad"]);
      // For db, db-only comes first for everyone under ci:*.
      policyDenial(() => engine.evaluateTask(teamA, { resources: [{ resource: "db", scopes: ["write"] }] }));
    });

    it("agrees with the TypeScript reading of the rules on every request of a random sample", () => {
      let seed = 42;
      const random = (n: number) => {
        seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
        return seed % n;
      };
      const pick = <T>(items: readonly T[]): T => items[random(items.length)] as T;
      const globs = ["ci:*", "ci:a*", "ci:*b", "ci:ab", "*", "gh:*", "ci:a*b*"];
      const scopes = ["read", "write", "admin"];
      const levels: Classification[] = ["public", "internal", "confidential", "restricted"];
      const resources = [
        catalogEntry("r1", { classification: "public" }),
        catalogEntry("r2"),
        catalogEntry("r3"),
      ];
      for (let round = 0; round < 8; round += 1) {
        const policies = Array.from({ length: 2 + random(5) }, (_, index) =>
          yamlRule({
            name: `rule-${index}`,
            agents: [pick(globs), ...(random(2) ? [pick(globs)] : [])],
            resources: [...new Set([pick(resources).name, pick(resources).name])],
            scopes: [...new Set([pick(scopes), pick(scopes)])],
            maxClassification: pick(levels),
            ...(random(3) === 0 ? { claims: { team: random(2) ? "a" : ["a", "b*"] } } : {}),
          }),
        );
        const engine = new PolicyEngine({ resources, policies });
        for (let sample = 0; sample < 40; sample += 1) {
          const agent: AgentLike = {
            id: pick(["ci:ab", "ci:a", "ci:b", "ci:axb", "gh:ab", "ci:"]),
            claims: random(2) ? { team: pick(["a", "b", "bee", "c"]) } : {},
          };
          const resource = pick(resources);
          const asked = [pick(scopes)];
          const classification = levels[Math.max(1, random(4))] as Classification;
          const rule = engine.ruleFor(agent, resource.name);
          const expected =
            rule !== undefined &&
            asked.every((scope) => rule.scopes.includes(scope)) &&
            levels.indexOf(classification) <= levels.indexOf(rule.maxClassification) &&
            levels.indexOf(classification) >= levels.indexOf(resource.classification);
          let decision: TaskDecision | undefined;
          try {
            decision = engine.evaluateTask(agent, {
              resources: [{ resource: resource.name, scopes: asked }],
              dataClassification: classification,
            });
          } catch (error) {
            expect(error).to.be.instanceOf(PolicyDeniedError);
          }
          const sample = JSON.stringify({ policies, agent, resource: resource.name, asked, classification });
          expect(decision !== undefined, sample).to.equal(expected);
          if (decision) expect(decision.resources[0]?.rule, sample).to.equal(rule);
        }
      }
    });
  });

  describe("limits", () => {
    const engine = new PolicyEngine({
      resources: catalog,
      policies: [
        yamlRule({
          name: "db-rw",
          agents: ["ci:*"],
          resources: ["db"],
          scopes: ["read", "write"],
          maxClassification: "confidential",
          maxTtlSeconds: 120,
        }),
      ],
    });
    const task = approvedTask("db", ["read", "write"], "confidential");

    it("keeps the lease TTL within the rule, in Cedar, naming the limit in the reason", () => {
      expect(engine.evaluateLease(CI_MAIN, task, { resource: "db", ttlSeconds: 120 }).maxTtlSeconds).to.equal(
        120,
      );
      const denied = policyDenial(() =>
        engine.evaluateLease(CI_MAIN, task, { resource: "db", ttlSeconds: 121 }),
      );
      expect(deniedBy(denied)).to.deep.equal([]);
      expect(denied.reason).to.equal("ttlSeconds 121 exceeds the maximum of 120");
    });

    it("keeps lease scopes within the rule and the task", () => {
      expect(engine.evaluateLease(CI_MAIN, task, { resource: "db", scopes: ["write"] }).scopes).to.deep.equal(
        ["write"],
      );
      policyDenial(() => engine.evaluateLease(CI_MAIN, task, { resource: "db", scopes: ["admin"] }));
    });

    it("bounds the task's classification by the rule's maximum rank", () => {
      const denied = policyDenial(() =>
        engine.evaluateTask(CI_MAIN, {
          resources: [{ resource: "db", scopes: ["read"] }],
          dataClassification: "restricted",
        }),
      );
      expect(denied.reason).to.equal("classification restricted exceeds confidential allowed for db");
    });
  });

  describe("claims conditions", () => {
    const engine = new PolicyEngine({
      resources: catalog,
      policies: [
        yamlRule({
          name: "release",
          agents: ["ci:*"],
          resources: ["api"],
          scopes: ["read", "write"],
          claims: { repository: "acme/app", ref: ["refs/heads/main", "refs/tags/v*"] },
        }),
        yamlRule({
          name: "admins",
          agents: ["ci:*"],
          resources: ["db"],
          claims: { groups: ["db-admins", "sre"] },
        }),
        yamlRule({ name: "fallback", agents: ["ci:*"], resources: ["api"], scopes: ["read"] }),
      ],
      policyClaims: { groups: "string[]" },
    });
    const writeApi = { resources: [{ resource: "api", scopes: ["write"] }] };
    const withClaims = (claims: Record<string, string | string[] | number>) => ({ id: "ci:x", claims });

    it("applies a rule whose claims match exactly, any of a list, or a glob", () => {
      for (const ref of ["refs/heads/main", "refs/tags/v1.2.3", "refs/tags/v"]) {
        expect(
          engine.evaluateTask(withClaims({ repository: "acme/app", ref }), writeApi).policyIds,
        ).to.deep.equal(["release"]);
      }
    });

    it("falls through to the next rule when a claim differs, is missing or has another type", () => {
      const mismatches: Record<string, string | string[]>[] = [
        { repository: "acme/app", ref: "refs/heads/dev" },
        { repository: "acme/app-fork", ref: "refs/heads/main" },
        { repository: "acme/app" },
        { repository: ["acme/app"], ref: "refs/heads/main" },
        {},
      ];
      for (const claims of mismatches) {
        const denied = policyDenial(() => engine.evaluateTask(withClaims(claims), writeApi));
        expect(denied.reason).to.equal("scope write on api is not allowed");
        expect(engine.ruleFor(withClaims(claims), "api")?.name).to.equal("fallback");
      }
      // An agent known only by its id has no claims.
      expect(engine.ruleFor("ci:x", "api")?.name).to.equal("fallback");
    });

    it("matches a list claim when it holds one of the values", () => {
      const readDb = {
        resources: [{ resource: "db", scopes: ["read"] }],
        dataClassification: "confidential" as const,
      };
      const admin = withClaims({ groups: ["dev", "sre"] });
      expect(() => engine.evaluateTask(admin, readDb)).to.throw(/confidential exceeds internal/);
      expect(engine.ruleFor(admin, "db")?.name).to.equal("admins");
      // A single string where a list is declared counts as a one-element list.
      expect(engine.ruleFor(withClaims({ groups: "sre" }), "db")?.name).to.equal("admins");
      expect(engine.ruleFor(withClaims({ groups: ["dev"] }), "db")).to.equal(undefined);
    });

    it("refuses at load a pattern a claim's declared type cannot honour", () => {
      const listGlob = loadRefusal(
        () =>
          new PolicyEngine({
            resources: catalog,
            policies: [yamlRule({ agents: ["*"], resources: ["api"], claims: { groups: "sre-*" } })],
            policyClaims: { groups: "string[]" },
          }),
      );
      expect(listGlob).to.include("claims.groups");
      loadRefusal(
        () =>
          new PolicyEngine({
            resources: catalog,
            policies: [yamlRule({ agents: ["*"], resources: ["api"], claims: { run_attempt: "1" } })],
            policyClaims: { run_attempt: "number" },
          }),
      );
    });

    it("records the declared claims a task was created on, the deciding rule's first, bounded", () => {
      const agent = withClaims({
        repository: "acme/app",
        ref: "refs/heads/main",
        groups: ["sre"],
        actor: "mallory",
        ...Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`extra${i}`, "x"])),
      });
      const decision = engine.evaluateTask(agent, writeApi);
      expect(engine.claimsToRecord(agent, decision)).to.deep.equal({
        repository: "acme/app",
        ref: "refs/heads/main",
        groups: ["sre"],
      });
      const long = (c: string) => c.repeat(1300);
      const huge = withClaims({ repository: long("r"), ref: long("x"), groups: [long("g")] });
      const bounded = new PolicyEngine({
        resources: catalog,
        policies: [],
        policyClaims: { repository: "string", ref: "string", groups: "string[]", a: "string", b: "string" },
      }).claimsToRecord({ ...huge, claims: { ...huge.claims, a: long("a"), b: long("b") } });
      expect(JSON.stringify(bounded).length).to.be.at.most(4096);
      expect(Object.keys(bounded)).to.have.length(3);
    });
  });

  describe("loading .cedar files", () => {
    const config: PolicyConfig = {
      resources: catalog,
      policies: [yamlRule({ name: "read-api", agents: ["ci:*"], resources: ["api"] })],
    };

    it("refuses a file that does not parse, naming the file and line", async () => {
      const file = await cedarFixture("broken-syntax.cedar");
      const message = loadRefusal(() => new PolicyEngine(config, { cedarFiles: [file] }));
      expect(message).to.match(/broken-syntax\.cedar:6:\d+: /);
    });

    it("refuses a policy naming an unknown attribute, naming the file and line", async () => {
      const file = await cedarFixture("unknown-attribute.cedar");
      const message = loadRefusal(() => new PolicyEngine(config, { cedarFiles: [file] }));
      expect(message).to.match(/unknown-attribute\.cedar:7:\d+: .*clasification/);
      expect(message).to.not.include("unknown-attribute.cedar:3");
    });

    it("refuses an undeclared claim, and takes it once policyClaims declares it", () => {
      const file = {
        path: "actor.cedar",
        text: `forbid (principal, action, resource)\nwhen { principal.claims has actor && principal.claims.actor == "mallory" };\n`,
      };
      expect(loadRefusal(() => new PolicyEngine(config, { cedarFiles: [file] }))).to.match(
        /^actor\.cedar:1: .*principal\.claims has actor.*policyClaims/,
      );
      const engine = new PolicyEngine(
        { ...config, policyClaims: { actor: "string" } },
        { cedarFiles: [file] },
      );
      const mallory = { id: "ci:x", claims: { actor: "mallory" } };
      const request = { resources: [{ resource: "api", scopes: ["read"] }] };
      expect(deniedBy(policyDenial(() => engine.evaluateTask(mallory, request)))).to.deep.equal([
        "actor.cedar:1",
      ]);
      expect(
        engine.evaluateTask({ id: "ci:x", claims: { actor: "alice" } }, request).policyIds,
      ).to.deep.equal(["read-api"]);
    });

    it("refuses templates and policy ids used twice", () => {
      loadRefusal(
        () =>
          new PolicyEngine(config, {
            cedarFiles: [{ path: "t.cedar", text: "permit (principal == ?principal, action, resource);" }],
          }),
      );
      const clash = loadRefusal(
        () =>
          new PolicyEngine(config, {
            cedarFiles: [{ path: "c.cedar", text: '@id("read-api")\nforbid (principal, action, resource);' }],
          }),
      );
      expect(clash).to.include("read-api").and.include("c.cedar:1");
    });

    it("refuses to be built from a config naming policyFiles without their content", () => {
      loadRefusal(() => new PolicyEngine({ ...config, policyFiles: ["policies/"] }));
      expect(
        new PolicyEngine({ ...config, policyFiles: ["policies/"] }, { cedarFiles: [] }).compiled.sources,
      ).to.have.length(1);
    });

    it("refuses a rule naming a resource the catalog does not have", () => {
      expect(
        loadRefusal(
          () =>
            new PolicyEngine({
              resources: catalog,
              policies: [yamlRule({ agents: ["*"], resources: ["nope"] })],
            }),
        ),
      ).to.include("nope");
    });

    it("reads the .cedar files of a directory in name order, relative to a base directory", async () => {
      const base = await mkdtemp(join(tmpdir(), "jitkey-cedar-"));
      try {
        await mkdir(join(base, "policies"));
        await writeFile(join(base, "policies", "b.cedar"), "forbid (principal, action, resource);\n");
        await writeFile(join(base, "policies", "a.cedar"), "permit (principal, action, resource);\n");
        await writeFile(join(base, "policies", "notes.txt"), "not policy");
        const files = await readCedarFiles(["policies", join(POLICY_FIXTURES, "office-hours.cedar")], base);
        expect(files.map(({ path }) => path.slice(path.lastIndexOf("/") + 1))).to.deep.equal([
          "a.cedar",
          "b.cedar",
          "office-hours.cedar",
        ]);
        const missing = await readCedarFiles(["missing.cedar"], base).then(
          () => undefined,
          (error: unknown) => error,
        );
        expect(missing).to.be.instanceOf(PolicyLoadError);
        expect((missing as Error).message).to.include(join(base, "missing.cedar"));
      } finally {
        await rm(base, { recursive: true, force: true });
      }
    });
  });

  describe("stillPermitted", () => {
    const config: PolicyConfig = {
      resources: catalog,
      policies: [
        yamlRule({
          name: "release",
          agents: ["ci:*"],
          resources: ["api"],
          scopes: ["read", "write"],
          claims: { ref: "refs/heads/main" },
        }),
      ],
    };
    const clock = new ManualClock(Date.UTC(2025, 5, 2, 10));
    const task = {
      ...approvedTask("api", ["read", "write"]),
      createdAt: new Date(clock.now() - 60_000).toISOString(),
      agentClaims: { ref: "refs/heads/main" },
    };
    const lease = (ttlSeconds: number, scopes = ["read"]) => ({
      resource: "api",
      scopes,
      expiresAt: new Date(clock.now() + ttlSeconds * 1000).toISOString(),
    });

    it("permits a live lease the policy allows, judging the agent by the task's recorded claims", () => {
      const engine = new PolicyEngine(config, { clock });
      expect(engine.stillPermitted(lease(300), task)).to.deep.include({
        allowed: true,
        policyIds: ["release"],
      });
      const unrecorded = engine.stillPermitted(lease(300), {
        ...task,
        agentClaims: { ref: "refs/heads/dev" },
      });
      expect(unrecorded).to.deep.include({ allowed: false, policyIds: [] });
    });

    it("refuses a lease whose remaining lifetime, scopes or resource the policy no longer allows", () => {
      const engine = new PolicyEngine(config, { clock });
      expect(engine.stillPermitted(lease(301), task).allowed).to.equal(false);
      expect(engine.stillPermitted(lease(30, ["admin"]), task).allowed).to.equal(false);
      expect(engine.stillPermitted({ ...lease(30), resource: "gone" }, task).allowed).to.equal(false);
    });

    it("refuses a lease an introspect forbid now matches, naming the forbid", () => {
      const engine = new PolicyEngine(config, {
        clock,
        cedarFiles: [
          {
            path: "stop.cedar",
            text: '@id("stop-old-tasks")\nforbid (principal, action == Jitkey::Action::"introspect", resource)\nwhen { context.task.ageSeconds > 30 };\n',
          },
        ],
      });
      expect(engine.stillPermitted(lease(60), task)).to.deep.equal({
        allowed: false,
        reason: "forbidden by policy stop-old-tasks",
        policyIds: ["stop-old-tasks"],
      });
    });
  });

  describe("introspection as a lease's remaining lifetime shrinks", () => {
    /** Whether the analysis lets one allow answer shorter lifetimes, for these Cedar policies. */
    function survives(...texts: string[]): boolean {
      return allowSurvivesShorterTtl(
        texts.map((text) => {
          const parsed = policyToJson(text);
          if (parsed.type === "failure") throw new Error(parsed.errors.map((e) => e.message).join("; "));
          return { effect: parsed.json.effect, json: parsed.json };
        }),
      );
    }
    const permit = (condition: string) => `permit (principal, action, resource) ${condition};`;
    const forbid = (condition: string) => `forbid (principal, action, resource) ${condition};`;

    it("holds only for bounds a shorter lifetime cannot turn against the request", () => {
      expect(survives(permit("when { context.ttlSeconds <= 600 }"))).to.equal(true);
      expect(survives(permit("when { 600 > context.ttlSeconds && context has ttlSeconds }"))).to.equal(true);
      expect(survives(permit("unless { context.ttlSeconds > 600 }"))).to.equal(true);
      expect(
        survives(permit("when { !(context.ttlSeconds >= 600) || context.task.ttlSeconds > 5 }")),
      ).to.equal(true);
      expect(survives(forbid("when { context.ttlSeconds > 3600 }"))).to.equal(true);
      expect(survives(forbid("unless { context.ttlSeconds <= 3600 }"))).to.equal(true);
      // A lower bound in a permit, an upper one in a forbid: a shorter lifetime can deny.
      expect(survives(permit("when { context.ttlSeconds >= 60 }"))).to.equal(false);
      expect(survives(permit("unless { context.ttlSeconds < 60 }"))).to.equal(false);
      expect(survives(forbid("when { context.ttlSeconds < 60 }"))).to.equal(false);
      expect(
        survives(permit("when { context.ttlSeconds <= 600 }"), forbid("when { 60 > context.ttlSeconds }")),
      ).to.equal(false);
      // Uses the analysis cannot order: under if, compared with non-literals, equality, the whole context.
      expect(survives(permit("when { if context.ttlSeconds < 5 then true else false }"))).to.equal(false);
      expect(survives(permit("when { context.ttlSeconds <= context.task.ttlSeconds }"))).to.equal(false);
      expect(survives(permit("when { context.ttlSeconds == 5 }"))).to.equal(false);
      expect(survives(permit("when { (context.ttlSeconds <= 5) == true }"))).to.equal(false);
      expect(survives(permit('when { context == {"ttlSeconds": 5} }'))).to.equal(false);
      // A record literal's attribute names are the author's, never operators.
      expect(survives(forbid('when { {"has": 0, "t": context.ttlSeconds < 60}.t }'))).to.equal(false);
      expect(survives(permit('when { {"&&": 0, "t": context.ttlSeconds}.t >= 60 }'))).to.equal(false);
      expect(survives(permit('when { {"!": context.ttlSeconds >= 60}["!"] }'))).to.equal(false);
      expect(survives(permit('when { {"t": context.ttlSeconds <= 60}.t }'))).to.equal(false);
      expect(survives(permit('when { {"limit": 600}.limit >= 5 && principal is Jitkey::Agent }'))).to.equal(
        true,
      );
      // Not reading it at all, or reading only the task's own lifetime, is safe.
      expect(survives(permit("when { context.task.ttlSeconds >= 60 }"))).to.equal(true);
    });

    const clock = new ManualClock(Date.UTC(2025, 5, 2, 10));
    const task = {
      ...approvedTask("api", ["read"]),
      createdAt: new Date(clock.now() - 60_000).toISOString(),
    };
    const lease = {
      resource: "api",
      scopes: ["read"],
      expiresAt: new Date(clock.now() + 120_000).toISOString(),
    };
    const rule = yamlRule({ name: "api", agents: ["ci:*"], resources: ["api"], maxTtlSeconds: 600 });

    it("answers a shorter lifetime with the allow already decided, when the policies allow it", () => {
      const engine = new PolicyEngine({ resources: catalog, policies: [rule] }, { clock });
      const compiled = CompiledPolicy.compile({ resources: catalog, policies: [rule] });
      const view = compiled.view({ id: CI_MAIN.id });
      const ask = (ttlSeconds: number) =>
        compiled.authorize("introspect", view, "api", {
          task: {
            goal: "g",
            resources: ["api"],
            scopes: ["read"],
            classification: "internal",
            ageSeconds: 60,
          },
          scopes: ["read"],
          ttlSeconds,
          now: clock.now(),
        });
      const first = ask(120);
      expect(first.allowed).to.equal(true);
      // The same decision object: Cedar was not asked again for 119 or 1 seconds left.
      expect(ask(119)).to.equal(first);
      expect(ask(1)).to.equal(first);
      // A longer lifetime is asked afresh, and a denied one is never remembered as an allow.
      expect(ask(601).allowed).to.equal(false);
      expect(ask(300)).to.not.equal(first);
      expect(engine.stillPermitted(lease, task).allowed).to.equal(true);
    });

    it("asks Cedar again each time when a shorter lifetime could deny", () => {
      const engine = new PolicyEngine(
        { resources: catalog, policies: [rule] },
        {
          clock,
          cedarFiles: [
            {
              path: "short.cedar",
              text: '@id("too-short")\nforbid (principal, action == Jitkey::Action::"introspect", resource)\nwhen { context has ttlSeconds && context.ttlSeconds < 60 };\n',
            },
          ],
        },
      );
      const at = (secondsLeft: number) => ({
        ...lease,
        expiresAt: new Date(clock.now() + secondsLeft * 1000).toISOString(),
      });
      expect(engine.stillPermitted(at(120), task).allowed).to.equal(true);
      expect(engine.stillPermitted(at(61), task).allowed).to.equal(true);
      expect(engine.stillPermitted(at(59), task)).to.deep.include({
        allowed: false,
        policyIds: ["too-short"],
      });
    });
  });

  describe("entities and context", () => {
    it("sends only the attributes some policy reads, and all of those", async () => {
      const yamlOnly = CompiledPolicy.compile({
        resources: catalog,
        policies: [yamlRule({ agents: ["*"], resources: ["api"], claims: { ref: "refs/*" } })],
        policyClaims: { groups: "string[]" },
      });
      const use = yamlOnly.attributeUse;
      for (const path of ["principal.id", "principal.claims", "principal.claims.ref", "context.scopes"]) {
        expect(use.needs(path), path).to.equal(true);
      }
      expect(use.needs("context.task.classificationRank")).to.equal(true);
      expect(use.needs("context.ttlSeconds")).to.equal(true);
      for (const path of [
        "principal.issuer",
        "principal.claims.groups",
        "context.time",
        "context.task.goal",
      ]) {
        expect(use.needs(path), path).to.equal(false);
      }
      expect(use.needsAny("resource")).to.equal(false);
      expect(
        yamlOnly.view({ id: "ci:x", claims: { ref: "refs/x", groups: ["a"] } }).entity.attrs,
      ).to.deep.equal({
        id: "ci:x",
        claims: { ref: "refs/x" },
      });

      const withFiles = CompiledPolicy.compile({
        resources: catalog,
        policies: [],
        cedarFiles: [await cedarFixture("forbid-actor.cedar"), await cedarFixture("office-hours.cedar")],
        policyClaims: { job_workflow_ref: "string" },
      });
      for (const path of [
        "resource.tags",
        "resource.classificationRank",
        "context.sourceAddress",
        "context.time",
      ]) {
        expect(withFiles.attributeUse.needs(path), path).to.equal(true);
      }
      expect(withFiles.attributeUse.needs("resource.owner")).to.equal(false);
    });

    it("lets a .cedar policy read the task's goal, and a record used whole", () => {
      const engine = new PolicyEngine(
        {
          resources: catalog,
          policies: [yamlRule({ name: "read-api", agents: ["ci:*"], resources: ["api"] })],
        },
        {
          cedarFiles: [
            {
              path: "goals.cedar",
              text: '@id("no-exfiltration")\nforbid (principal, action, resource)\nwhen { context.task.goal like "*exfiltrat*" };\n@id("whole-task")\nforbid (principal, action, resource)\nwhen { (if context.scopes.isEmpty() then context.task else context.task).goal == "x" };\n',
            },
          ],
        },
      );
      const request = (goal: string) => ({ goal, resources: [{ resource: "api", scopes: ["read"] }] });
      expect(
        deniedBy(policyDenial(() => engine.evaluateTask(CI_MAIN, request("exfiltrate the CRM")))),
      ).to.deep.equal(["no-exfiltration"]);
      expect(engine.evaluateTask(CI_MAIN, request("summarise tickets")).policyIds).to.deep.equal([
        "read-api",
      ]);
      expect(deniedBy(policyDenial(() => engine.evaluateTask(CI_MAIN, request("x"))))).to.deep.equal([
        "whole-task",
      ]);
      expect(engine.compiled.attributeUse.needs("context.task.ageSeconds")).to.equal(true);
      expect(engine.compiled.attributeUse.needs("context.now")).to.equal(false);
    });

    it("builds requests that conform to the schema the policies are validated against", () => {
      const compiled = CompiledPolicy.compile({
        resources: catalog,
        policies: [yamlRule({ agents: ["*"], resources: ["api"], claims: { ref: "refs/*" } })],
        policyClaims: { groups: "string[]", run_attempt: "number", fork: "boolean" },
      });
      const agent = {
        id: "ci:x",
        owner: "platform",
        claims: { ref: "refs/heads/main", groups: ["a"], run_attempt: 2, fork: false, undeclared: "x" },
      };
      const view = compiled.view(agent);
      expect(Object.keys(view.claims).sort()).to.deep.equal(["fork", "groups", "ref", "run_attempt"]);
      // Unpruned: every attribute the schema declares.
      const entities = checkParseEntities({
        entities: [agentEntity(agent, view.claims), resourceEntity(vault), agentEntity({ id: "k8s:sa" }, {})],
        schema: compiled.schema,
      });
      expect(entities).to.deep.equal({ type: "success" });
      for (const action of ["createTask", "mint", "introspect", "delegate"]) {
        const context = requestContext({
          task: {
            id: "tsk_1",
            goal: "g",
            resources: ["api"],
            scopes: ["read"],
            classification: "internal",
            approver: "operator:alice",
            ageSeconds: 12.5,
            ttlSeconds: 600,
          },
          scopes: ["read"],
          ttlSeconds: 60,
          now: Date.now(),
          sourceAddress: "2001:db8::1",
          actor: "ci:sub-agent",
        });
        expect(
          checkParseContext({
            context,
            schema: compiled.schema,
            action: { type: "Jitkey::Action", id: action },
          }),
        ).to.deep.equal({ type: "success" });
      }
    });
  });
});

describe("docs/policy.md", () => {
  it("shows what its YAML rules compile to, and its .cedar examples load", async () => {
    const text = await readFile(fileURLToPath(new URL("../../docs/policy.md", import.meta.url)), "utf8");
    const blocks = (language: string) =>
      [...text.matchAll(new RegExp(`\`\`\`${language}\\n([\\s\\S]*?)\`\`\``, "g"))].map(
        (match) => match[1] ?? "",
      );
    const [rules, claims] = blocks("yaml").map((block) => parseYaml(block) as Record<string, unknown>);
    const [compiledExample, cedarExample, schemaExample] = blocks("cedar");
    expect(checkParseSchema(schemaExample ?? "")).to.deep.equal({ type: "success" });
    const resources = [
      catalogEntry("demo-api", { scopes: ["read", "write"] }),
      catalogEntry("orders-db", { classification: "confidential", scopes: ["read", "write"] }),
    ];
    const config = {
      resources,
      policies: (rules?.policies ?? []) as PolicyRule[],
      policyClaims: {
        ...(claims?.policyClaims as Record<string, ClaimType>),
        job_workflow_ref: "string" as const,
      },
    };
    const engine = new PolicyEngine(config, {
      cedarFiles: [{ path: "docs.cedar", text: cedarExample ?? "" }],
    });
    expect(engine.policyText()).to.include((compiledExample ?? "").trim());
    expect(engine.compiled.sources.map(({ id }) => id)).to.include.members([
      "release-deploys",
      "ci-read",
      "restricted-office-hours",
      "dba-orders",
    ]);
  });
});
