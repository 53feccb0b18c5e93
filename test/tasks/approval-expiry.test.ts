import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import {
  type AgentSession,
  agentSession,
  auditEvents,
  createTask,
  eventOf,
  metricValue,
  mintLease,
} from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";

describe("approvals expire if unused", () => {
  let t: TestBroker;
  let clock: ManualClock;
  let agent: AgentSession;

  beforeEach(async () => {
    clock = new ManualClock(Math.floor(Date.now() / 1000) * 1000);
    t = await startTestBroker({
      name: "approval-expiry",
      clock,
      config: (raw) => {
        raw.tasks = { approvalUnusedSeconds: 60 };
      },
    });
    agent = await agentSession(t);
  });
  afterEach(async () => {
    await t.close();
  });

  const statusOf = async (taskId: string) => (await t.broker.taskStore.get(taskId))?.status;
  const dueAt = async (taskId: string) =>
    Number(await t.redis.zscore(t.broker.keys.forId(taskId).liveTasks, taskId));

  it("ends an approved task that minted nothing within approvalUnusedSeconds as expired (approval_unused)", async () => {
    const taskId = await createTask(t, agent, { ttlSeconds: 600 });
    const approvedAt = Date.parse((await t.broker.taskStore.get(taskId))?.approvedAt ?? "");
    // Looked at when the approval lapses, not when the task would end.
    expect(await dueAt(taskId)).to.equal(approvedAt + 60_000);
    clock.advance(59_000);
    await t.broker.sweeper.sweepOnce();
    expect(await statusOf(taskId)).to.equal("approved");

    clock.advance(2_000);
    await eventually(async () => (await statusOf(taskId)) === "expired");
    const task = await t.broker.taskStore.get(taskId);
    expect(task?.closedReason).to.equal("approval_unused");
    expect(eventOf(await auditEvents(t, { taskId }), "task_expired")).to.include({
      reason: "approval_unused",
      actor: "system",
    });
    expect(
      await metricValue(t, "jitkey_tasks_expired_unused_total", "jitkey_tasks_expired_unused_total"),
    ).to.equal(1);
    const late = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .send({ resource: "records" })
      .expect(409);
    expect(late.body.error.code).to.equal("task_closed");
  });

  it("keeps a task whose approval was used, until its own end", async () => {
    const taskId = await createTask(t, agent, { ttlSeconds: 600 });
    const { lease } = await mintLease(t, agent, taskId, { ttlSeconds: 30 });
    clock.advance(61_000);
    // The lease's expiry and the lapse are both due; the task's is looked at and kept.
    await eventually(async () => (await t.broker.leaseStore.get(lease.id))?.status === "revoked");
    await eventually(
      async () =>
        (await dueAt(taskId)) === Date.parse((await t.broker.taskStore.get(taskId))?.expiresAt ?? ""),
    );
    expect(await statusOf(taskId)).to.equal("approved");
    await mintLease(t, agent, taskId);
  });

  it("lapses auto-approved tasks too, and never looks later than the task's end", async () => {
    const auto = await agentSession(t, "repo:acme/app");
    const created = await t.http
      .post("/v1/tasks")
      .set(auto.headers)
      .send({ goal: "read", resources: [{ resource: "demo-api", scopes: ["read"] }], ttlSeconds: 30 })
      .expect(201);
    const taskId = created.body.task.id as string;
    expect(created.body.task.status).to.equal("approved");
    // The task ends before the approval would lapse: due at its end.
    expect(await dueAt(taskId)).to.equal(Date.parse(created.body.task.expiresAt));

    const longer = await t.http
      .post("/v1/tasks")
      .set(auto.headers)
      .send({ goal: "read", resources: [{ resource: "demo-api", scopes: ["read"] }], ttlSeconds: 600 })
      .expect(201);
    clock.advance(61_000);
    await eventually(async () => (await statusOf(longer.body.task.id)) === "expired");
    expect((await t.broker.taskStore.get(longer.body.task.id))?.closedReason).to.equal("approval_unused");
    expect((await t.broker.taskStore.get(taskId))?.closedReason).to.equal(undefined);
  });

  it("does not lapse pending tasks: they wait for a decision until their own end", async () => {
    const taskId = await createTask(t, agent, { ttlSeconds: 600, approve: false });
    clock.advance(120_000);
    await t.broker.sweeper.sweepOnce();
    expect(await t.broker.tasks.expireIfDue(taskId)).to.equal(false);
    expect(await statusOf(taskId)).to.equal("pending");
  });
});
