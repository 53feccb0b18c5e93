import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import {
  type AgentSession,
  agentSession,
  auditEvents,
  createTask,
  leaseReaches,
  metricValue,
  mintLease,
  operatorHeaders,
} from "../helpers/flows.ts";

describe("quotas: live leases per agent and per resource, pending tasks per agent", () => {
  let t: TestBroker;
  let clock: ManualClock;
  let agent: AgentSession;

  beforeEach(async () => {
    clock = new ManualClock(Math.floor(Date.now() / 1000) * 1000);
    t = await startTestBroker({
      name: "quotas",
      clock,
      config: (raw) => {
        raw.quotas = { liveLeasesPerAgent: 2, liveLeasesPerResource: 3, pendingTasksPerAgent: 2 };
      },
    });
    agent = await agentSession(t);
  });
  afterEach(async () => {
    await t.close();
  });

  const mint = (who: AgentSession, taskId: string, body: Record<string, unknown> = {}) =>
    t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(who.headers)
      .send({ resource: "records", ...body });

  /** Approved tasks of `who`, in `count` different shards: an agent's leases span shards. */
  async function tasksInDistinctShards(who: AgentSession, count: number): Promise<string[]> {
    const byShard = new Map<number, string>();
    while (byShard.size < count) {
      const taskId = await createTask(t, who);
      byShard.set(t.broker.keys.forId(taskId).index, taskId);
    }
    return [...byShard.values()];
  }

  it("refuses an agent's lease past liveLeasesPerAgent over all its tasks and shards: 429 naming the quota", async () => {
    const [first, second, third] = await tasksInDistinctShards(agent, 3);
    await mintLease(t, agent, first as string, { ttlSeconds: 60 });
    await mintLease(t, agent, second as string, { ttlSeconds: 120 });
    const refused = await mint(agent, third as string).expect(429);
    expect(refused.body.error).to.include({ code: "rate_limited", quota: "liveLeasesPerAgent", limit: 2 });
    // A slot frees up when the first lease ends, in 60 s.
    expect(refused.headers["retry-after"]).to.equal("60");
    expect(
      await metricValue(
        t,
        "jitkey_quota_denials_total",
        'jitkey_quota_denials_total{quota="liveLeasesPerAgent"}',
      ),
    ).to.equal(1);
    expect(
      await metricValue(t, "jitkey_quota_limit", 'jitkey_quota_limit{quota="liveLeasesPerAgent"}'),
    ).to.equal(2);
    expect(
      await metricValue(
        t,
        "jitkey_denials_total",
        'jitkey_denials_total{decision="lease",code="rate_limited"}',
      ),
    ).to.equal(1);
    const denied = (await auditEvents(t, { taskId: third as string })).find((e) => e.type === "lease_denied");
    expect(denied?.reason).to.match(/liveLeasesPerAgent/);
    expect(await t.redis.zcard(t.broker.keys.forId(third as string).taskLeases(third as string))).to.equal(0);
  });

  it("gives a slot back once a lease is revoked", async () => {
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await mintLease(t, agent, taskId);
    await mint(agent, taskId).expect(429);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    await leaseReaches(t, lease.id, "revoked");
    await mint(agent, taskId).expect(201);
  });

  it("counts a resource's live leases over every agent", async () => {
    const others = [agent, await agentSession(t, "agent-two"), await agentSession(t, "agent-three")];
    for (const who of others) await mintLease(t, who, await createTask(t, who));
    const fourth = await agentSession(t, "agent-four");
    const refused = await mint(fourth, await createTask(t, fourth)).expect(429);
    expect(refused.body.error.quota).to.equal("liveLeasesPerResource");
    // The per-agent slot the refused mint took first was given back.
    const demo = await t.http
      .post(
        `/v1/tasks/${await createTask(t, fourth, { resources: [{ resource: "demo-api", scopes: ["read"] }] })}/leases`,
      )
      .set(fourth.headers)
      .send({ resource: "demo-api" });
    expect(demo.status).to.equal(201);
  });

  it("lets exactly the limit through when mints race for the last slots", async () => {
    const taskIds: string[] = [];
    // One at a time: at most two may wait for approval.
    for (let i = 0; i < 6; i++) taskIds.push(await createTask(t, agent));
    const answers = await Promise.all(taskIds.map((taskId) => mint(agent, taskId)));
    expect(answers.map((res) => res.status).sort()).to.deep.equal([201, 201, 429, 429, 429, 429]);
  });

  it("frees a slot a broker took but never wrote a lease for, once it is stale", async () => {
    const taskId = await createTask(t, agent);
    await mintLease(t, agent, taskId);
    // What a broker that died between taking its slot and writing its lease leaves behind.
    const keys = await t.redis.keys(`${t.prefix}:*:quota:{live-leases:agent:*}`);
    expect(keys).to.have.length(1);
    await t.redis.zadd(keys[0] as string, clock.now(), "lse_AbandonedAbandonedAband");
    await mint(agent, taskId).expect(429);
    clock.advance((t.config.revocation.staleSeconds + 1) * 1000);
    await mint(agent, taskId).expect(201);
    expect(await t.redis.zscore(keys[0] as string, "lse_AbandonedAbandonedAband")).to.equal(null);
  });

  it("refuses pending tasks past pendingTasksPerAgent, and frees a slot when one is decided", async () => {
    const first = await createTask(t, agent, { approve: false });
    await createTask(t, agent, { approve: false });
    const refused = await t.http
      .post("/v1/tasks")
      .set(agent.headers)
      .send({ goal: "one too many", resources: [{ resource: "records", scopes: ["read"] }] })
      .expect(429);
    expect(refused.body.error).to.include({ code: "rate_limited", quota: "pendingTasksPerAgent" });
    expect(Number(refused.headers["retry-after"])).to.be.within(1, 600);
    const rejected = (await auditEvents(t, { agentId: agent.agentId })).find(
      (e) => e.type === "task_rejected",
    );
    expect(rejected).to.include({ quota: "pendingTasksPerAgent", decision: "deny" });
    expect(await metricValue(t, "jitkey_pending_tasks", "jitkey_pending_tasks")).to.equal(2);

    // Auto-approved tasks never wait, so they take no slot.
    const auto = await agentSession(t, "repo:acme/app");
    for (let i = 0; i < 3; i++) {
      const res = await t.http
        .post("/v1/tasks")
        .set(auto.headers)
        .send({ goal: "read", resources: [{ resource: "demo-api", scopes: ["read"] }] })
        .expect(201);
      expect(res.body.task.status).to.equal("approved");
    }

    await t.http.post(`/v1/tasks/${first}/deny`).set(operatorHeaders(t)).send({}).expect(200);
    await createTask(t, agent, { approve: false });
  });
});
