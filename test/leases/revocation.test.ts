import { expect } from "chai";
import type { Lease } from "../../broker/leases/lease.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import {
  agentSession,
  auditEvents,
  createTask,
  eventOf,
  leaseReaches,
  metricValue,
  mintLease,
  operatorHeaders,
} from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";

const LAG_COUNT = (reason: string) => `jitkey_revoke_lag_seconds_count{reason="${reason}"}`;
const LAG_SUM = (reason: string) => `jitkey_revoke_lag_seconds_sum{reason="${reason}"}`;

describe("revocation triggers", () => {
  let t: TestBroker;
  beforeEach(async () => {
    t = await startTestBroker({ name: "revocation" });
  });
  afterEach(async () => {
    await t.close();
  });

  async function forceRevoke(selector: Record<string, unknown>): Promise<{ id: string; matched: number }> {
    const res = await t.http
      .post("/v1/revocations")
      .set(operatorHeaders(t))
      .send({ ...selector, reason: "incident 42" })
      .expect(202);
    return res.body.revocation;
  }

  describe("expiry", () => {
    it("moves revocation up when the backend grants less than the lease asked for", async () => {
      const agent = await agentSession(t);
      const taskId = await createTask(t, agent);
      t.recording.grantSeconds = 2;
      try {
        const { lease, credential } = await mintLease(t, agent, taskId, { ttlSeconds: 300 });
        expect(Date.parse(lease.expiresAt) - Date.now()).to.be.at.most(2000);
        expect(lease.expiresAt).to.equal(credential.expiresAt);
        const revoked = await leaseReaches(t, lease.id, "revoked", 6000);
        expect(revoked.revokeReason).to.equal("expired");
        expect(await t.recording.liveArtifacts()).to.not.include(lease.id);
      } finally {
        t.recording.grantSeconds = undefined;
      }
    });

    it("revokes a lease at its expiry with reason expired and removes its artifact", async () => {
      const agent = await agentSession(t);
      const taskId = await createTask(t, agent);
      const { lease } = await mintLease(t, agent, taskId, { ttlSeconds: 1 });
      expect(Date.parse(lease.expiresAt) - Date.now()).to.be.at.most(1000);
      expect(await t.recording.liveArtifacts()).to.include(lease.id);

      const revoked = await leaseReaches(t, lease.id, "revoked", 5000);
      expect(revoked.revokeReason).to.equal("expired");
      expect(revoked.revokeRequestedBy).to.equal("system");
      expect(Date.parse(revoked.revokedAt as string)).to.be.at.least(Date.parse(lease.expiresAt));
      expect(await t.recording.liveArtifacts()).to.not.include(lease.id);
      expect((await t.broker.taskStore.get(taskId))?.status).to.equal("approved");

      expect(await metricValue(t, "jitkey_revoke_lag_seconds", LAG_COUNT("expired"))).to.equal(1);
      const lag = await metricValue(t, "jitkey_revoke_lag_seconds", LAG_SUM("expired"));
      expect(lag).to.be.at.least(0).and.below(5);
      expect(eventOf(await auditEvents(t, { leaseId: lease.id }), "lease_revoked").reason).to.equal(
        "expired",
      );
    });

    it("ends a task at its expiry and revokes its leases", async () => {
      const agent = await agentSession(t);
      const taskId = await createTask(t, agent, { ttlSeconds: 2 });
      const { lease } = await mintLease(t, agent, taskId);
      // A lease never outlives its task.
      expect(Date.parse(lease.expiresAt)).to.be.at.most(Date.now() + 2000);

      const task = await eventually(async () => {
        const res = await t.http.get(`/v1/tasks/${taskId}`).set(agent.headers).expect(200);
        return res.body.task.status === "expired" ? res.body.task : undefined;
      }, 6000);
      expect(task.closedBy).to.equal("system");
      const revoked = await leaseReaches(t, lease.id, "revoked", 5000);
      expect(revoked.revokeReason).to.equal("expired");
      expect(await t.recording.liveArtifacts()).to.deep.equal([]);
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(agent.headers)
        .send({ resource: "records" })
        .expect(409);
      expect(res.body.error.code).to.equal("task_closed");
      expect((await auditEvents(t, { taskId })).map((e) => e.type)).to.include("task_expired");
    });
  });

  it("revokes every lease of a task when it completes", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const leases = [
      (await mintLease(t, agent, taskId)).lease,
      (await mintLease(t, agent, taskId, { scopes: ["read"] })).lease,
      (await mintLease(t, agent, taskId, { ttlSeconds: 60 })).lease,
    ];
    const other = await createTask(t, agent);
    const { lease: untouched } = await mintLease(t, agent, other);

    const done = await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
    expect(done.body.task.status).to.equal("completed");
    expect(done.body.revoking).to.equal(3);
    for (const lease of leases) {
      const revoked = await leaseReaches(t, lease.id, "revoked");
      expect(revoked.revokeReason).to.equal("task_completed");
    }
    expect(await t.recording.liveArtifacts()).to.deep.equal([untouched.id]);
    expect((await t.broker.leaseStore.get(untouched.id))?.status).to.equal("active");
    expect(await metricValue(t, "jitkey_revoke_lag_seconds", LAG_COUNT("task_completed"))).to.equal(3);

    const again = await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(409);
    expect(again.body.error.code).to.equal("task_closed");
  });

  describe("early release", () => {
    it("revokes a lease released by its owner with reason released", async () => {
      const agent = await agentSession(t);
      const taskId = await createTask(t, agent);
      const { lease } = await mintLease(t, agent, taskId);
      const { lease: kept } = await mintLease(t, agent, taskId);
      const res = await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
      expect(res.body.lease.id).to.equal(lease.id);
      expect(["revoking", "revoked"]).to.include(res.body.lease.status);
      const revoked = await leaseReaches(t, lease.id, "revoked");
      expect(revoked.revokeReason).to.equal("released");
      expect(revoked.revokeRequestedBy).to.equal(`agent:${agent.agentId}`);
      expect(await t.recording.liveArtifacts()).to.deep.equal([kept.id]);
      expect((await t.broker.taskStore.get(taskId))?.status).to.equal("approved");
      expect(await metricValue(t, "jitkey_revoke_lag_seconds", LAG_COUNT("released"))).to.equal(1);
    });

    it("records an operator's release with reason operator and refuses other agents", async () => {
      const agent = await agentSession(t);
      const stranger = await agentSession(t, "agent-stranger");
      const taskId = await createTask(t, agent);
      const { lease } = await mintLease(t, agent, taskId);
      const refused = await t.http.delete(`/v1/leases/${lease.id}`).set(stranger.headers).expect(403);
      expect(refused.body.error.code).to.equal("forbidden");
      expect((await t.broker.leaseStore.get(lease.id))?.status).to.equal("active");

      await t.http.delete(`/v1/leases/${lease.id}`).set(operatorHeaders(t)).expect(202);
      const revoked = await leaseReaches(t, lease.id, "revoked");
      expect(revoked.revokeReason).to.equal("operator");
      expect(revoked.revokeRequestedBy).to.equal("operator:alice");
      expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    });
  });

  describe("operator force revocation", () => {
    it("revokes one lease by leaseId and leaves its task live", async () => {
      const agent = await agentSession(t);
      const taskId = await createTask(t, agent);
      const { lease } = await mintLease(t, agent, taskId);
      const { lease: sibling } = await mintLease(t, agent, taskId);
      const revocation = await forceRevoke({ leaseId: lease.id });
      expect(revocation.matched).to.equal(1);
      // The request record is kept for the retention period, not forever (its audit event is).
      const ttl = await t.redis.ttl(t.broker.keys.revocation(revocation.id));
      expect(ttl)
        .to.be.greaterThan(0)
        .and.at.most(t.config.retention.leaseRecordDays * 86_400);
      const revoked = await leaseReaches(t, lease.id, "revoked");
      expect(revoked.revokeReason).to.equal("operator");
      expect((await t.broker.leaseStore.get(sibling.id))?.status).to.equal("active");
      expect((await t.broker.taskStore.get(taskId))?.status).to.equal("approved");
      await mintLease(t, agent, taskId);
      expect(await metricValue(t, "jitkey_revoke_lag_seconds", LAG_COUNT("operator"))).to.equal(1);
    });

    it("revokes a task by taskId: the task ends revoked and no new lease can be minted", async () => {
      const agent = await agentSession(t);
      const taskId = await createTask(t, agent);
      const leases = [(await mintLease(t, agent, taskId)).lease, (await mintLease(t, agent, taskId)).lease];
      const revocation = await forceRevoke({ taskId });
      expect(revocation.matched).to.equal(2);
      expect((await t.broker.taskStore.get(taskId))?.status).to.equal("revoked");
      for (const lease of leases)
        expect((await leaseReaches(t, lease.id, "revoked")).revokeReason).to.equal("operator");
      const issueCalls = t.recording.issueCalls;
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(agent.headers)
        .send({ resource: "records" })
        .expect(409);
      expect(res.body.error.code).to.equal("task_closed");
      expect(t.recording.issueCalls).to.equal(issueCalls);
      expect(await t.recording.liveArtifacts()).to.deep.equal([]);
      expect(eventOf(await auditEvents(t, { taskId }), "task_revoked").actor).to.equal("operator:alice");
    });

    it("revokes everything one agent holds by agentId and nothing of other agents", async () => {
      const agent = await agentSession(t, "agent-rogue");
      const bystander = await agentSession(t, "agent-bystander");
      const first = await createTask(t, agent);
      const second = await createTask(t, agent);
      const pending = await createTask(t, agent, { approve: false });
      const mine = [
        (await mintLease(t, agent, first)).lease,
        (await mintLease(t, agent, first)).lease,
        (await mintLease(t, agent, second)).lease,
      ];
      const theirTask = await createTask(t, bystander);
      const { lease: theirs } = await mintLease(t, bystander, theirTask);

      const revocation = await forceRevoke({ agentId: agent.agentId });
      expect(revocation.matched).to.equal(3);
      for (const taskId of [first, second, pending])
        expect((await t.broker.taskStore.get(taskId))?.status, taskId).to.equal("revoked");
      for (const lease of mine) await leaseReaches(t, lease.id, "revoked");
      expect(await t.recording.liveArtifacts()).to.deep.equal([theirs.id]);
      expect((await t.broker.taskStore.get(theirTask))?.status).to.equal("approved");
    });

    it("revokes every lease on a resource by resource, leaving tasks and other resources alone", async () => {
      const agent = await agentSession(t);
      const taskId = await createTask(t, agent, {
        resources: [
          { resource: "records", scopes: ["read"] },
          { resource: "demo-api", scopes: ["read"] },
        ],
      });
      const { lease: records } = await mintLease(t, agent, taskId);
      const { lease: demo } = await mintLease(t, agent, taskId, { resource: "demo-api" });
      const revocation = await forceRevoke({ resource: "records" });
      expect(revocation.matched).to.equal(1);
      await leaseReaches(t, records.id, "revoked");
      expect((await t.broker.leaseStore.get(demo.id))?.status).to.equal("active");
      expect((await t.broker.taskStore.get(taskId))?.status).to.equal("approved");
      expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    });

    it("revokes every live lease and ends every live task with all", async () => {
      const a = await agentSession(t, "agent-a");
      const b = await agentSession(t, "agent-b");
      const taskA = await createTask(t, a);
      const taskB = await createTask(t, b);
      const leases: Lease[] = [
        (await mintLease(t, a, taskA)).lease,
        (await mintLease(t, a, taskA)).lease,
        (await mintLease(t, b, taskB)).lease,
      ];
      // Already revoked leases are not matched again.
      await t.http.delete(`/v1/leases/${leases[2]?.id}`).set(b.headers).expect(202);
      await leaseReaches(t, leases[2]?.id as string, "revoked");

      const revocation = await forceRevoke({ all: true });
      expect(revocation.matched).to.equal(2);
      for (const taskId of [taskA, taskB])
        expect((await t.broker.taskStore.get(taskId))?.status).to.equal("revoked");
      for (const lease of leases) await leaseReaches(t, lease.id, "revoked");
      expect(await t.recording.liveArtifacts()).to.deep.equal([]);
      const requested = (await auditEvents(t)).filter((e) => e.type === "revocation_requested");
      expect(requested).to.have.length(1);
      expect(requested[0]).to.include({ all: true, matched: 2, reason: "incident 42" });
    });

    it("rejects a revocation that names no selector or more than one", async () => {
      for (const body of [{ reason: "x" }, { leaseId: "lse_1", taskId: "tsk_1", reason: "x" }]) {
        const res = await t.http.post("/v1/revocations").set(operatorHeaders(t)).send(body);
        expect(res.status).to.be.oneOf([400, 422]);
        expect(res.body.error.code).to.equal("invalid_request");
      }
    });
  });

  it("switches introspection to active:false right after a force revoke", async () => {
    const agent = await agentSession(t, "repo:acme/app:ref:refs/heads/main");
    const rs = { Authorization: `Bearer ${t.introspectorToken}` };
    const taskId = await createTask(t, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const { lease, credential } = await mintLease(t, agent, taskId, { resource: "demo-api" });
    const token = credential.token as string;
    const live = await t.http.post("/v1/introspect").set(rs).type("form").send({ token }).expect(200);
    expect(live.body).to.include({ active: true, jti: lease.id });

    await forceRevoke({ leaseId: lease.id });
    // No waiting for the worker: the lease left `active` in the request itself.
    const dead = await t.http.post("/v1/introspect").set(rs).type("form").send({ token }).expect(200);
    expect(dead.body).to.deep.equal({ active: false });
    await leaseReaches(t, lease.id, "revoked");
    const after = await t.http.post("/v1/introspect").set(rs).send({ token }).expect(200);
    expect(after.body).to.deep.equal({ active: false });
  });
});
