import { expect } from "chai";
import type { Classification } from "../../broker/config.ts";
import { agentGlobMatches, classificationRank, PolicyEngine } from "../../broker/policy/policy-engine.ts";
import {
  policyDenial as denial,
  catalogEntry as resource,
  yamlRule as rule,
} from "../fixtures/policy/builders.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

describe("PolicyEngine", () => {
  describe("agent globs", () => {
    it("anchors a glob without * to the whole id", () => {
      expect(agentGlobMatches("ci:agent", "ci:agent")).to.equal(true);
      expect(agentGlobMatches("ci:agent", "ci:agent2")).to.equal(false);
      expect(agentGlobMatches("ci:agent", "xci:agent")).to.equal(false);
    });

    it("lets * match any run of characters, slashes and the empty run included", () => {
      expect(agentGlobMatches("ci:repo:acme/*", "ci:repo:acme/app:ref:refs/heads/main")).to.equal(true);
      expect(agentGlobMatches("ci:repo:acme/*", "ci:repo:acme/")).to.equal(true);
      expect(agentGlobMatches("ci:repo:acme/*", "ci:repo:acmex/app")).to.equal(false);
      expect(agentGlobMatches("*:deploy", "k8s:prod:deploy")).to.equal(true);
      expect(agentGlobMatches("a*b*c", "a-x-b-y-c")).to.equal(true);
      expect(agentGlobMatches("a*b*c", "a-x-c-y-b")).to.equal(false);
    });

    it("treats regex metacharacters in ids as literal characters", () => {
      const glob = "spiffe://acme.org/ns/[prod]/sa/(build)+?|x$^{1}\\*";
      expect(agentGlobMatches(glob, "spiffe://acme.org/ns/[prod]/sa/(build)+?|x$^{1}\\anything")).to.equal(
        true,
      );
      expect(agentGlobMatches(glob, "spiffe://acmeXorg/ns/[prod]/sa/(build)+?|x$^{1}\\anything")).to.equal(
        false,
      );
      expect(agentGlobMatches(glob, "spiffe://acme.org/ns/p/sa/(build)+?|x$^{1}\\a")).to.equal(false);
      expect(agentGlobMatches("ci:app.v1", "ci:appXv1")).to.equal(false);
      expect(agentGlobMatches("ci:a+", "ci:aaa")).to.equal(false);
      expect(agentGlobMatches("ci:a|ci:b", "ci:b")).to.equal(false);
      expect(agentGlobMatches("ci:a|ci:b", "ci:a|ci:b")).to.equal(true);
    });
  });

  describe("rule selection", () => {
    const engine = new PolicyEngine({
      resources: [resource("api"), resource("db")],
      policies: [
        rule({ name: "db-only", agents: ["ci:*"], resources: ["db"], scopes: ["read", "write"] }),
        rule({ name: "narrow", agents: ["ci:team-a/*"], resources: ["api"], scopes: ["read"] }),
        rule({
          name: "broad",
          agents: ["ci:*"],
          resources: ["api"],
          scopes: ["read", "write"],
          autoApprove: true,
        }),
      ],
    });

    it("applies the first rule that matches both agent and resource", () => {
      expect(engine.ruleFor("ci:team-a/app", "api")?.name).to.equal("narrow");
      expect(engine.ruleFor("ci:team-b/app", "api")?.name).to.equal("broad");
      expect(engine.ruleFor("ci:team-a/app", "db")?.name).to.equal("db-only");
      expect(engine.ruleFor("gh:team-a/app", "api")).to.equal(undefined);
    });

    it("denies what the first matching rule forbids even when a later rule would allow it", () => {
      const denied = denial(() =>
        engine.evaluateTask("ci:team-a/app", { resources: [{ resource: "api", scopes: ["write"] }] }),
      );
      expect(denied.reason).to.include("write");
      const allowed = engine.evaluateTask("ci:team-b/app", {
        resources: [{ resource: "api", scopes: ["write"] }],
      });
      expect(allowed.resources[0]?.rule.name).to.equal("broad");
      expect(allowed.autoApprove).to.equal(true);
    });

    it("denies a known resource no rule names for the agent, and an unknown resource", () => {
      expect(
        denial(() => engine.evaluateTask("gh:x", { resources: [{ resource: "api", scopes: ["read"] }] }))
          .reason,
      ).to.include("api");
      expect(
        denial(() => engine.evaluateTask("ci:x", { resources: [{ resource: "nope", scopes: ["read"] }] }))
          .reason,
      ).to.include("nope");
    });
  });

  describe("scopes", () => {
    const engine = new PolicyEngine({
      resources: [resource("api", { scopes: ["read", "write", "admin"] })],
      policies: [rule({ agents: ["ci:*"], resources: ["api"], scopes: ["read", "write"] })],
    });

    it("grants a subset of the rule's scopes, without duplicates", () => {
      const decision = engine.evaluateTask("ci:x", {
        resources: [{ resource: "api", scopes: ["read", "write", "read"] }],
      });
      expect(decision.resources[0]?.scopes).to.deep.equal(["read", "write"]);
    });

    it("denies a scope the resource has but the rule does not allow", () => {
      denial(() =>
        engine.evaluateTask("ci:x", { resources: [{ resource: "api", scopes: ["read", "admin"] }] }),
      );
    });

    it("denies a scope the resource does not have", () => {
      denial(() => engine.evaluateTask("ci:x", { resources: [{ resource: "api", scopes: ["delete"] }] }));
    });

    it("denies an empty scope list", () => {
      denial(() => engine.evaluateTask("ci:x", { resources: [{ resource: "api", scopes: [] }] }));
    });

    it("denies lease scopes the task was not approved for, even when the rule allows them", () => {
      const task = {
        resources: [{ resource: "api", scopes: ["read"] }],
        dataClassification: "internal" as const,
      };
      expect(engine.evaluateLease("ci:x", task, { resource: "api" }).scopes).to.deep.equal(["read"]);
      denial(() => engine.evaluateLease("ci:x", task, { resource: "api", scopes: ["write"] }));
    });

    it("denies a lease on a resource the task did not declare", () => {
      const task = {
        resources: [{ resource: "api", scopes: ["read"] }],
        dataClassification: "internal" as const,
      };
      denial(() => engine.evaluateLease("ci:x", task, { resource: "other" }));
    });
  });

  describe("classification", () => {
    const engine = new PolicyEngine({
      resources: [
        resource("wiki", { classification: "public" }),
        resource("crm", { classification: "confidential" }),
      ],
      policies: [
        rule({ agents: ["ci:*"], resources: ["wiki"], maxClassification: "internal" }),
        rule({ agents: ["ci:*"], resources: ["crm"], maxClassification: "confidential" }),
      ],
    });

    it("orders public < internal < confidential < restricted", () => {
      const order: Classification[] = ["public", "internal", "confidential", "restricted"];
      expect(order.map(classificationRank)).to.deep.equal([0, 1, 2, 3]);
    });

    it("defaults the task's classification to its most sensitive resource", () => {
      const crm = engine.evaluateTask("ci:x", { resources: [{ resource: "crm", scopes: ["read"] }] });
      expect(crm.dataClassification).to.equal("confidential");
      const wiki = engine.evaluateTask("ci:x", { resources: [{ resource: "wiki", scopes: ["read"] }] });
      expect(wiki.dataClassification).to.equal("public");
      const lenient = new PolicyEngine({
        resources: [
          resource("wiki", { classification: "public" }),
          resource("crm", { classification: "confidential" }),
        ],
        policies: [rule({ agents: ["ci:*"], resources: ["wiki", "crm"], maxClassification: "restricted" })],
      });
      const both = lenient.evaluateTask("ci:x", {
        resources: [
          { resource: "wiki", scopes: ["read"] },
          { resource: "crm", scopes: ["read"] },
        ],
      });
      expect(both.dataClassification).to.equal("confidential");
    });

    it("keeps a declared classification above the resource's when the rule allows it", () => {
      const decision = engine.evaluateTask("ci:x", {
        resources: [{ resource: "wiki", scopes: ["read"] }],
        dataClassification: "internal",
      });
      expect(decision.dataClassification).to.equal("internal");
    });

    it("denies a declared classification below the data of a requested resource", () => {
      denial(() =>
        engine.evaluateTask("ci:x", {
          resources: [{ resource: "crm", scopes: ["read"] }],
          dataClassification: "internal",
        }),
      );
    });

    it("denies a declared classification above the rule's maximum", () => {
      expect(
        denial(() =>
          engine.evaluateTask("ci:x", {
            resources: [{ resource: "wiki", scopes: ["read"] }],
            dataClassification: "confidential",
          }),
        ).reason,
      ).to.include("confidential");
      denial(() =>
        engine.evaluateTask("ci:x", {
          resources: [{ resource: "crm", scopes: ["read"] }],
          dataClassification: "restricted",
        }),
      );
    });

    it("checks every resource's rule against the task's one classification", () => {
      // crm makes the task confidential; wiki's rule only allows up to internal.
      denial(() =>
        engine.evaluateTask("ci:x", {
          resources: [
            { resource: "crm", scopes: ["read"] },
            { resource: "wiki", scopes: ["read"] },
          ],
        }),
      );
    });
  });

  describe("lease TTL", () => {
    const task = (name: string) => ({
      resources: [{ resource: name, scopes: ["read"] }],
      dataClassification: "internal" as const,
    });

    it("caps the lease at the smaller of the rule's and the resource's maximum", () => {
      const engine = new PolicyEngine({
        resources: [resource("long", { maxTtlSeconds: 900 }), resource("short", { maxTtlSeconds: 120 })],
        policies: [rule({ agents: ["ci:*"], resources: ["long", "short"], maxTtlSeconds: 300 })],
      });
      expect(engine.evaluateLease("ci:x", task("long"), { resource: "long" }).maxTtlSeconds).to.equal(300);
      expect(engine.evaluateLease("ci:x", task("short"), { resource: "short" }).maxTtlSeconds).to.equal(120);
      expect(
        engine.evaluateLease("ci:x", task("short"), { resource: "short", ttlSeconds: 120 }).maxTtlSeconds,
      ).to.equal(120);
      expect(
        denial(() => engine.evaluateLease("ci:x", task("short"), { resource: "short", ttlSeconds: 121 }))
          .reason,
      ).to.include("121");
      denial(() => engine.evaluateLease("ci:x", task("long"), { resource: "long", ttlSeconds: 301 }));
    });
  });

  describe("evaluation at lease time", () => {
    const resources = [resource("api", { classification: "internal" })];
    const approvedUnder = new PolicyEngine({
      resources,
      policies: [
        rule({ agents: ["ci:*"], resources: ["api"], scopes: ["read", "write"], autoApprove: true }),
      ],
    });

    it("denies a lease for a task approved earlier once the rules changed", () => {
      const decision = approvedUnder.evaluateTask("ci:x", {
        resources: [{ resource: "api", scopes: ["read", "write"] }],
      });
      const task = {
        resources: decision.resources.map(({ resource, scopes }) => ({ resource, scopes })),
        dataClassification: decision.dataClassification,
      };
      expect(approvedUnder.evaluateLease("ci:x", task, { resource: "api" }).scopes).to.deep.equal([
        "read",
        "write",
      ]);

      const scopeNarrowed = new PolicyEngine({
        resources,
        policies: [rule({ agents: ["ci:*"], resources: ["api"], scopes: ["read"] })],
      });
      denial(() => scopeNarrowed.evaluateLease("ci:x", task, { resource: "api" }));
      expect(
        scopeNarrowed.evaluateLease("ci:x", task, { resource: "api", scopes: ["read"] }).scopes,
      ).to.deep.equal(["read"]);

      const ruleRemoved = new PolicyEngine({
        resources,
        policies: [rule({ agents: ["gh:*"], resources: ["api"], scopes: ["read", "write"] })],
      });
      denial(() => ruleRemoved.evaluateLease("ci:x", task, { resource: "api", scopes: ["read"] }));

      const classificationLowered = new PolicyEngine({
        resources,
        policies: [
          rule({
            agents: ["ci:*"],
            resources: ["api"],
            scopes: ["read", "write"],
            maxClassification: "public",
          }),
        ],
      });
      denial(() => classificationLowered.evaluateLease("ci:x", task, { resource: "api", scopes: ["read"] }));

      const resourceReclassified = new PolicyEngine({
        resources: [resource("api", { classification: "restricted" })],
        policies: [
          rule({
            agents: ["ci:*"],
            resources: ["api"],
            scopes: ["read", "write"],
            maxClassification: "restricted",
          }),
        ],
      });
      expect(
        denial(() => resourceReclassified.evaluateLease("ci:x", task, { resource: "api" })).reason,
      ).to.match(/restricted data, above the task's internal/);

      const ttlLowered = new PolicyEngine({
        resources,
        policies: [
          rule({ agents: ["ci:*"], resources: ["api"], scopes: ["read", "write"], maxTtlSeconds: 60 }),
        ],
      });
      expect(ttlLowered.evaluateLease("ci:x", task, { resource: "api" }).maxTtlSeconds).to.equal(60);
      denial(() => ttlLowered.evaluateLease("ci:x", task, { resource: "api", ttlSeconds: 61 }));
    });
  });

  describe("auto-approval", () => {
    const engine = new PolicyEngine({
      resources: [resource("a"), resource("b"), resource("c")],
      policies: [
        rule({ name: "auto-a", agents: ["ci:*"], resources: ["a"], autoApprove: true }),
        rule({ name: "auto-b", agents: ["ci:*"], resources: ["b"], autoApprove: true }),
        rule({ name: "manual-c", agents: ["ci:*"], resources: ["c"], autoApprove: false }),
      ],
    });

    it("auto-approves when every resource's rule allows it and names the rules", () => {
      const decision = engine.evaluateTask("ci:x", {
        resources: [
          { resource: "a", scopes: ["read"] },
          { resource: "b", scopes: ["read"] },
        ],
      });
      expect(decision.autoApprove).to.equal(true);
      expect(decision.approvedBy).to.equal("policy:auto-a,auto-b");
    });

    it("needs an operator when any one resource's rule does not auto-approve", () => {
      const decision = engine.evaluateTask("ci:x", {
        resources: [
          { resource: "a", scopes: ["read"] },
          { resource: "c", scopes: ["read"] },
        ],
      });
      expect(decision.autoApprove).to.equal(false);
      expect(decision.approvedBy).to.equal(undefined);
    });
  });
});

describe("Lease lifetime over HTTP", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "policy-http" });
  });
  after(async () => {
    await t.close();
  });

  it("never lets a lease outlive its task", async () => {
    const agent = { Authorization: `Bearer ${await t.agentToken("repo:acme/app:ref:refs/heads/main")}` };
    const created = await t.http
      .post("/v1/tasks")
      .set(agent)
      .send({ goal: "quick read", resources: [{ resource: "demo-api", scopes: ["read"] }], ttlSeconds: 5 })
      .expect(201);
    const task = created.body.task;
    expect(task.status).to.equal("approved");
    const taskExpiry = Date.parse(task.expiresAt);
    expect(taskExpiry - Date.parse(task.createdAt)).to.equal(5000);

    const minted = await t.http
      .post(`/v1/tasks/${task.id}/leases`)
      .set(agent)
      .send({ resource: "demo-api", ttlSeconds: 300 })
      .expect(201);
    const leaseExpiry = Date.parse(minted.body.lease.expiresAt);
    expect(leaseExpiry).to.be.at.most(taskExpiry);
    expect(leaseExpiry).to.be.above(Date.now());
    expect(Date.parse(minted.body.credential.expiresAt)).to.be.at.most(taskExpiry);
    const [, payload] = (minted.body.credential.token as string).split(".");
    const exp = JSON.parse(Buffer.from(payload as string, "base64url").toString()).exp as number;
    expect(exp * 1000).to.be.at.most(taskExpiry);

    // Without a ttlSeconds the rule's maximum (300 s) is asked for: still capped by the task.
    const defaulted = await t.http
      .post(`/v1/tasks/${task.id}/leases`)
      .set(agent)
      .send({ resource: "demo-api" })
      .expect(201);
    expect(Date.parse(defaulted.body.lease.expiresAt)).to.be.at.most(taskExpiry);

    await t.http.post(`/v1/tasks/${task.id}/complete`).set(agent).expect(200);
  });
});
