import { expect } from "chai";
import { decodeJwt } from "jose";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { dumpPrefix, eventually } from "../helpers/redis.ts";

describe("HTTP walkthrough: agent creates task → operator approves → mint → introspect → complete → revoked", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "walkthrough" });
  });
  after(async () => {
    await t.close();
  });

  it("runs the README flow end to end and keeps the secret out of Redis, logs and audit", async () => {
    const agent = await t.agentToken("agent-reporter");
    const op = { Authorization: `Bearer ${t.operatorToken}` };
    const asAgent = { Authorization: `Bearer ${agent}` };

    const created = await t.http
      .post("/v1/tasks")
      .set(asAgent)
      .send({
        goal: "Summarise Q3 reports",
        resources: [{ resource: "records", scopes: ["read"] }],
        ttlSeconds: 600,
      })
      .expect(201);
    const task = created.body.task;
    expect(task.status).to.equal("pending");
    expect(task.agentId).to.equal("ci:agent-reporter");
    expect(task.dataClassification).to.equal("confidential");
    expect(task.resources[0].owner).to.equal("data-team");
    expect(task.agentOwner, "approvers see who answers for the agent").to.equal("platform-team");

    const pending = await t.http.get("/v1/tasks?status=pending").set(op).expect(200);
    expect(pending.body.tasks.map((x: { id: string }) => x.id)).to.include(task.id);

    const approved = await t.http
      .post(`/v1/tasks/${task.id}/approve`)
      .set(op)
      .send({ note: "ok for Q3" })
      .expect(200);
    expect(approved.body.task.status).to.equal("approved");
    expect(approved.body.task.approvedBy).to.equal("alice");

    // A broker-signed jwt credential on demo-api is not part of this task: denied.
    await t.http.post(`/v1/tasks/${task.id}/leases`).set(asAgent).send({ resource: "demo-api" }).expect(403);

    const minted = await t.http
      .post(`/v1/tasks/${task.id}/leases`)
      .set(asAgent)
      .send({ resource: "records", ttlSeconds: 120 })
      .expect(201);
    expect(minted.headers["cache-control"]).to.equal("no-store");
    const { lease, credential } = minted.body;
    expect(lease.status).to.equal("active");
    expect(lease.scopes).to.deep.equal(["read"]);
    expect(lease).to.not.have.property("handle");
    expect(credential.password).to.match(/^rec-secret-/);
    expect(await t.redis.exists(t.recording.artifactKey(lease.id))).to.equal(1);

    const read = await t.http.get(`/v1/leases/${lease.id}`).set(asAgent).expect(200);
    expect(JSON.stringify(read.body)).to.not.include(credential.password);

    const done = await t.http.post(`/v1/tasks/${task.id}/complete`).set(asAgent).expect(200);
    expect(done.body.task.status).to.equal("completed");
    expect(done.body.revoking).to.equal(1);

    const revoked = await eventually(async () => {
      const res = await t.http.get(`/v1/leases/${lease.id}`).set(op).expect(200);
      return res.body.lease.status === "revoked" ? res.body.lease : undefined;
    });
    expect(revoked.revokeReason).to.equal("task_completed");
    expect(await t.redis.exists(t.recording.artifactKey(lease.id))).to.equal(0);

    const audit = await t.http.get(`/v1/audit?taskId=${task.id}`).set(op).expect(200);
    const types = audit.body.events.map((e: { type: string }) => e.type);
    expect(types).to.include.members([
      "task_created",
      "task_approved",
      "lease_denied",
      "lease_issued",
      "task_completed",
      "lease_revoked",
    ]);
    expect(types.indexOf("task_created")).to.be.lessThan(types.indexOf("lease_revoked"));

    const secret = credential.password as string;
    expect(await dumpPrefix(t.redis, t.prefix)).to.not.include(secret);
    expect(t.logs.text()).to.not.include(secret);
    expect(JSON.stringify(audit.body)).to.not.include(secret);
  });

  it("switches introspection off the moment the task completes", async () => {
    const agent = await t.agentToken("repo:acme/app:ref:refs/heads/main");
    const asAgent = { Authorization: `Bearer ${agent}` };
    const rs = { Authorization: `Bearer ${t.introspectorToken}` };
    const created = await t.http
      .post("/v1/tasks")
      .set(asAgent)
      .send({
        goal: "Run the nightly read-only checks",
        resources: [{ resource: "demo-api", scopes: ["read"] }],
      })
      .expect(201);
    expect(created.body.task.status).to.equal("approved");
    expect(created.body.task.approvedBy).to.equal("policy:ci-read-auto");
    const taskId = created.body.task.id;
    const minted = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(asAgent)
      .send({ resource: "demo-api" })
      .expect(201);
    const { token } = minted.body.credential;
    const claims = decodeJwt(token);
    expect(claims).to.include({
      iss: "http://jitkey.test",
      aud: "https://demo-api.example",
      sub: "ci:repo:acme/app:ref:refs/heads/main",
    });
    expect(claims.jti).to.equal(minted.body.lease.id);
    expect(claims.task_id).to.equal(taskId);
    expect(claims.scope).to.equal("read");
    expect(claims.exp).to.equal(Date.parse(minted.body.lease.expiresAt) / 1000);

    const live = await t.http.post("/v1/introspect").set(rs).type("form").send({ token }).expect(200);
    expect(live.body).to.include({
      active: true,
      sub: "ci:repo:acme/app:ref:refs/heads/main",
      scope: "read",
      task_id: taskId,
    });

    await t.http.post(`/v1/tasks/${taskId}/complete`).set(asAgent).expect(200);
    const dead = await t.http.post("/v1/introspect").set(rs).send({ token }).expect(200);
    expect(dead.body).to.deep.equal({ active: false });

    const jwks = await t.http.get("/.well-known/jwks.json").expect(200);
    expect(jwks.body.keys.map((k: { kid: string }) => k.kid)).to.include(
      decodeJwt(token) && JSON.parse(Buffer.from(token.split(".")[0], "base64url").toString()).kid,
    );
    expect(t.logs.text()).to.not.include(token.split(".")[2]);
    expect(await dumpPrefix(t.redis, t.prefix)).to.not.include(token.split(".")[2]);
  });
});
