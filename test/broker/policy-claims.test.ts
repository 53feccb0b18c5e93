import { expect } from "chai";
import { AgentVerifier, boundClaims, CLAIM_LIMITS } from "../../broker/identity/agent-verifier.ts";
import { PolicyEngine } from "../../broker/policy/policy-engine.ts";
import { catalogEntry, yamlRule } from "../fixtures/policy/builders.ts";
import { TestIssuer } from "../helpers/identity.ts";

describe("Identity claims for policy", () => {
  describe("boundClaims", () => {
    it("keeps strings, whole and fractional numbers, booleans and string lists", () => {
      expect(
        boundClaims({
          repository: "acme/app",
          run_attempt: 2,
          ratio: 0.5,
          fork: false,
          groups: ["a", "b"],
          empty: [],
        }),
      ).to.deep.equal({
        repository: "acme/app",
        run_attempt: 2,
        ratio: 0.5,
        fork: false,
        groups: ["a", "b"],
        empty: [],
      });
    });

    it("leaves out objects, mixed lists, nulls and the per-token claims", () => {
      expect(
        boundClaims({
          "kubernetes.io": { namespace: "prod" },
          mixed: ["a", 1],
          nothing: null,
          infinite: Number.POSITIVE_INFINITY,
          exp: 1,
          iat: 1,
          nbf: 1,
          jti: "x",
          sub: "repo:acme/app",
        }),
      ).to.deep.equal({ sub: "repo:acme/app" });
    });

    it("leaves out oversized values and whatever is past the count and total size", () => {
      const long = "x".repeat(CLAIM_LIMITS.stringLength + 1);
      expect(
        boundClaims({ long, longItem: [long], many: Array(CLAIM_LIMITS.arrayLength + 1).fill("a") }),
      ).to.deep.equal({});
      const numerous = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`c${i}`, i]));
      expect(Object.keys(boundClaims(numerous))).to.have.length(CLAIM_LIMITS.count);
      const bulky = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`c${i}`, "y".repeat(1000)]));
      const kept = boundClaims(bulky);
      expect(JSON.stringify(kept).length).to.be.at.most(CLAIM_LIMITS.totalLength);
      expect(Object.keys(kept).length).to.be.within(7, 8);
    });
  });

  describe("verified agents", () => {
    let issuer: TestIssuer;
    let verifier: AgentVerifier;
    before(async () => {
      issuer = await TestIssuer.create("gha");
      verifier = new AgentVerifier({
        audience: "jitkey",
        maxTokenAgeSeconds: 3600,
        clockSkewSeconds: 30,
        jwksTimeoutSeconds: 5,
        issuers: [{ ...issuer.config(), agentIdClaim: "sub" }],
      });
    });

    it("carry their token's claims to policy without showing them when logged or serialised", async () => {
      const agent = await verifier.verify(
        await issuer.token("repo:acme/app:ref:refs/heads/main", {
          claims: { repository: "acme/app", ref: "refs/heads/main", environment: "prod" },
        }),
      );
      expect(agent.claims).to.include({
        repository: "acme/app",
        ref: "refs/heads/main",
        environment: "prod",
      });
      expect(agent.claims).to.not.have.property("exp");
      expect(Object.keys(agent)).to.not.include("claims");
      expect(JSON.stringify(agent)).to.not.include("environment").and.not.include("repository");
      expect(Object.isFrozen(agent.claims)).to.equal(true);
    });

    it("are matched by a rule's claims condition from their token", async () => {
      const engine = new PolicyEngine({
        resources: [catalogEntry("api")],
        policies: [
          yamlRule({
            name: "prod-deploys",
            agents: ["gha:*"],
            resources: ["api"],
            claims: { environment: "prod" },
          }),
        ],
      });
      const request = { resources: [{ resource: "api", scopes: ["read"] }] };
      const prod = await verifier.verify(
        await issuer.token("repo:acme/app", { claims: { environment: "prod" } }),
      );
      expect(engine.evaluateTask(prod, request).policyIds).to.deep.equal(["prod-deploys"]);
      const staging = await verifier.verify(
        await issuer.token("repo:acme/app", { claims: { environment: "staging" } }),
      );
      expect(() => engine.evaluateTask(staging, request)).to.throw(/no rule allows gha:repo:acme\/app/);
      // A copy of the principal does not take its claims along: the rule no longer applies.
      expect(() => engine.evaluateTask({ ...prod }, request)).to.throw(/no rule allows/);
    });
  });
});
