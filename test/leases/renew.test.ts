import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, auditEvents, createTask, eventOf, leaseReaches, mintLease } from "../helpers/flows.ts";

describe("POST /v1/leases/:id/renew", () => {
  let t: TestBroker;
  let clock: ManualClock;
  beforeEach(async () => {
    clock = new ManualClock(Math.floor(Date.now() / 1000) * 1000);
    t = await startTestBroker({ name: "renew", clock });
    t.recording.renewable = true;
  });
  afterEach(async () => {
    await t.close();
  });

  it("extends an active lease through its adapter, moves its due time and audits it", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { ttlSeconds: 3600 });
    const { lease } = await mintLease(t, agent, taskId, { ttlSeconds: 60 });
    clock.advance(30_000);
    const res = await t.http
      .post(`/v1/leases/${lease.id}/renew`)
      .set(agent.headers)
      .send({ ttlSeconds: 300 })
      .expect(200);
    const expected = new Date(clock.now() + 300_000).toISOString();
    expect(res.body.lease).to.include({ id: lease.id, status: "active", expiresAt: expected });
    expect(res.body.lease.renewedAt).to.equal(new Date(clock.now()).toISOString());
    expect(t.recording.renewals.map((r) => r.expiresAt.toISOString())).to.deep.equal([expected]);
    const shard = t.broker.keys.forId(lease.id);
    expect(Number(await t.redis.zscore(shard.liveLeases, lease.id))).to.equal(Date.parse(expected));
    const event = eventOf(await auditEvents(t, { leaseId: lease.id }), "lease_renewed");
    expect(event).to.include({
      previousExpiresAt: lease.expiresAt,
      expiresAt: expected,
      actor: `agent:${agent.agentId}`,
    });
  });

  it("never extends past the task's end or what policy allows now", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { ttlSeconds: 120 });
    const { lease } = await mintLease(t, agent, taskId, { ttlSeconds: 30 });
    const task = (await t.broker.taskStore.get(taskId)) as { expiresAt: string };
    const res = await t.http.post(`/v1/leases/${lease.id}/renew`).set(agent.headers).send({}).expect(200);
    expect(res.body.lease.expiresAt).to.equal(task.expiresAt);
    const over = await t.http
      .post(`/v1/leases/${lease.id}/renew`)
      .set(agent.headers)
      .send({ ttlSeconds: 601 })
      .expect(403);
    expect(over.body.error.code).to.equal("policy_denied");
  });

  it("refuses leases whose backend cannot extend credentials, leases no longer active, and other agents", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    t.recording.renewable = false;
    const { lease } = await mintLease(t, agent, taskId);
    const refused = await t.http.post(`/v1/leases/${lease.id}/renew`).set(agent.headers).send({}).expect(409);
    expect(refused.body.error.code).to.equal("lease_not_renewable");
    t.recording.renewable = true;
    const other = await agentSession(t, "agent-other");
    expect(
      (await t.http.post(`/v1/leases/${lease.id}/renew`).set(other.headers).send({}).expect(403)).body.error
        .code,
    ).to.equal("forbidden");
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    await leaseReaches(t, lease.id, "revoked");
    expect(
      (await t.http.post(`/v1/leases/${lease.id}/renew`).set(agent.headers).send({}).expect(409)).body.error
        .code,
    ).to.equal("lease_not_renewable");
    expect(t.recording.renewals).to.deep.equal([]);
    const denials = (await auditEvents(t, { leaseId: lease.id })).filter((e) => e.type === "lease_denied");
    expect(denials.map((e) => e.reason)).to.have.length(2);
  });
});
