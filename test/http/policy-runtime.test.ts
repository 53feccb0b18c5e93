import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, auditEvents, createTask, eventOf, leaseReaches, mintLease } from "../helpers/flows.ts";

/** Policy at request time through the broker: claims, policy ids in the trail, reload that revokes. */
describe("runtime policy through the broker: Cedar decisions, claims, hot reload", () => {
  let t: TestBroker;
  let file: string;
  const rs = () => ({ Authorization: `Bearer ${t.introspectorToken}` });

  beforeEach(async () => {
    file = join(await mkdtemp(join(tmpdir(), "jitkey-policy-")), "jitkey.json");
    t = await startTestBroker({
      name: "policy-runtime",
      configFile: file,
      config: (raw) => {
        (raw.policies as Record<string, unknown>[]).unshift({
          name: "main-branch-only",
          agents: ["ci:repo:acme/*"],
          resources: ["records"],
          scopes: ["read"],
          maxClassification: "confidential",
          autoApprove: true,
          maxTtlSeconds: 300,
          claims: { ref: "refs/heads/main" },
        });
      },
    });
  });
  afterEach(async () => {
    await t.close();
  });

  const ciAgent = async (ref: string) => {
    const token = await t.issuer.token("repo:acme/app", { claims: { ref, repository: "acme/app" } });
    return { agentId: "ci:repo:acme/app", headers: { Authorization: `Bearer ${token}` } };
  };

  it("applies a rule only to agents whose identity claims match, and records the claims on the task", async () => {
    const main = await ciAgent("refs/heads/main");
    const created = await t.http
      .post("/v1/tasks")
      .set(main.headers)
      .send({ goal: "nightly export", resources: [{ resource: "records", scopes: ["read"] }] })
      .expect(201);
    expect(created.body.task.status).to.equal("approved");
    const stored = await t.broker.taskStore.get(created.body.task.id);
    expect(stored?.agentClaims).to.include({ ref: "refs/heads/main" });
    const created_ = eventOf(await auditEvents(t, { taskId: created.body.task.id }), "task_created");
    expect(created_.policyIds).to.deep.equal(["main-branch-only"]);

    const branch = await ciAgent("refs/heads/feature");
    const refused = await t.http
      .post("/v1/tasks")
      .set(branch.headers)
      .send({ goal: "nightly export", resources: [{ resource: "records", scopes: ["read"] }] })
      .expect(403);
    expect(refused.body.error.code).to.equal("policy_denied");
  });

  it("records the deciding policy ids on every mint", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    const issued = eventOf(await auditEvents(t, { leaseId: lease.id }), "lease_issued");
    expect(issued.policyIds).to.deep.equal(["agents-approval"]);
  });

  it("switches a live credential off at once when a reload forbids it, and revokes its lease (reason policy)", async () => {
    const agent = await agentSession(t, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(t, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const { lease, credential } = await mintLease(t, agent, taskId, { resource: "demo-api" });
    const introspect = () =>
      t.http.post("/v1/introspect").set(rs()).type("form").send({ token: credential.token });
    expect((await introspect().expect(200)).body.active).to.equal(true);

    // An operator removes the rule that let CI read demo-api.
    const config = JSON.parse(await readFile(file, "utf8"));
    config.policies = config.policies.filter((rule: { name?: string }) => rule.name !== "ci-read-auto");
    await writeFile(file, JSON.stringify(config));
    const result = await t.broker.policyStore.reload();
    expect(result).to.include({ result: "applied" });

    expect((await introspect().expect(200)).body.active).to.equal(false);
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked).to.include({ revokeReason: "policy" });
    expect(revoked.revokeRequestedBy).to.match(/^policy:generation-2$/);
  });

  it("keeps the old policy when the new file is broken", async () => {
    const agent = await agentSession(t, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(t, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const { credential } = await mintLease(t, agent, taskId, { resource: "demo-api" });
    await writeFile(file, "{ not json");
    expect((await t.broker.policyStore.reload()).result).to.equal("rejected");
    const answer = await t.http
      .post("/v1/introspect")
      .set(rs())
      .type("form")
      .send({ token: credential.token });
    expect(answer.body.active).to.equal(true);
  });
});
