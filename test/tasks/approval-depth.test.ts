import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import {
  type AgentSession,
  agentSession,
  auditEvents,
  createTask,
  eventOf,
  operatorHeaders,
} from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";
import { bobHeaders, withApprovalFixtures } from "./setup.ts";

/**
 * Holds the next `n` task reads until all `n` have read, so concurrent approvals all see the
 * task as it was before any of them wrote: the race the guarded write must settle. Returns a
 * function that puts the store back.
 */
function readTogether(t: TestBroker, n: number): () => void {
  const store = t.broker.taskStore;
  const original = store.get;
  const waiting: (() => void)[] = [];
  store.get = async (id: string) => {
    const task = await original.call(store, id);
    if (waiting.length < n) {
      await new Promise<void>((resolve) => {
        waiting.push(resolve);
        if (waiting.length === n) for (const release of waiting) release();
      });
    }
    return task;
  };
  return () => {
    store.get = original;
  };
}

describe("approval depth: narrowed approvals, two operators for restricted data", () => {
  let t: TestBroker;
  let clock: ManualClock;
  let agent: AgentSession;
  const alice = () => operatorHeaders(t);

  beforeEach(async () => {
    clock = new ManualClock(Math.floor(Date.now() / 1000) * 1000);
    t = await startTestBroker({ name: "approval-depth", clock, config: withApprovalFixtures });
    agent = await agentSession(t);
  });
  afterEach(async () => {
    await t.close();
  });

  const pendingTask = (resources: { resource: string; scopes: string[] }[], ttlSeconds = 600) =>
    createTask(t, agent, { resources, ttlSeconds, approve: false });
  const approve = (taskId: string, headers: { Authorization: string }, body: Record<string, unknown> = {}) =>
    t.http.post(`/v1/tasks/${taskId}/approve`).set(headers).send(body);
  const mint = (taskId: string, body: Record<string, unknown>) =>
    t.http.post(`/v1/tasks/${taskId}/leases`).set(agent.headers).send(body);

  describe("narrowing", () => {
    it("approves fewer scopes and drops a resource; mints are checked against what was approved", async () => {
      const asked = [
        { resource: "records", scopes: ["read", "write"] },
        { resource: "demo-api", scopes: ["read", "write"] },
      ];
      const taskId = await pendingTask(asked);
      const res = await approve(taskId, alice(), {
        note: "read only, records only",
        resources: [{ resource: "records", scopes: ["read"] }],
      }).expect(200);
      expect(res.body.task.status).to.equal("approved");
      expect(res.body.task.resources).to.deep.equal([
        { resource: "records", scopes: ["read"], owner: "data-team" },
      ]);
      expect(res.body.task.requested.resources).to.deep.equal([
        { resource: "records", scopes: ["read", "write"], owner: "data-team" },
        { resource: "demo-api", scopes: ["read", "write"], owner: "api-team" },
      ]);
      expect(res.body.task.approvals).to.have.length(1);
      expect(res.body.task.approvals[0]).to.include({ by: "alice", note: "read only, records only" });

      expect(
        (await mint(taskId, { resource: "records", scopes: ["write"] }).expect(403)).body.error.code,
      ).to.equal("policy_denied");
      expect((await mint(taskId, { resource: "demo-api" }).expect(403)).body.error.code).to.equal(
        "policy_denied",
      );
      const minted = await mint(taskId, { resource: "records" }).expect(201);
      expect(minted.body.lease.scopes).to.deep.equal(["read"]);

      const approved = eventOf(await auditEvents(t, { taskId }), "task_approved");
      expect(approved).to.include({
        actor: "operator:alice",
        narrowed: true,
        reason: "read only, records only",
      });
      expect((approved.requested as { resources: unknown[] }).resources).to.have.length(2);
      expect((approved.approved as { resources: unknown[] }).resources).to.deep.equal([
        { resource: "records", scopes: ["read"], owner: "data-team" },
      ]);
    });

    it("shortens the task's life, and its due time in the live-tasks index moves with it", async () => {
      const taskId = await pendingTask([{ resource: "records", scopes: ["read"] }], 3600);
      clock.advance(10_000);
      const res = await approve(taskId, alice(), { ttlSeconds: 60 }).expect(200);
      const expected = new Date(clock.now() + 60_000).toISOString();
      expect(res.body.task.expiresAt).to.equal(expected);
      expect(res.body.task.requested.expiresAt).to.equal(
        new Date(clock.now() - 10_000 + 3_600_000).toISOString(),
      );
      const shard = t.broker.keys.forId(taskId);
      expect(Number(await t.redis.zscore(shard.liveTasks, taskId))).to.equal(Date.parse(expected));
      // A lease never outlives its task: the approved end, not the asked one, caps it.
      const lease = await mint(taskId, { resource: "records", ttlSeconds: 600 }).expect(201);
      expect(lease.body.lease.expiresAt).to.equal(expected);

      clock.advance(61_000);
      await eventually(async () => (await t.broker.taskStore.get(taskId))?.status === "expired");
    });

    it("never lengthens a task: a ttlSeconds past its end leaves the end as it was", async () => {
      const taskId = await pendingTask([{ resource: "records", scopes: ["read"] }], 120);
      const before = (await t.broker.taskStore.get(taskId))?.expiresAt;
      const res = await approve(taskId, alice(), { ttlSeconds: 86_400 }).expect(200);
      expect(res.body.task.expiresAt).to.equal(before);
      expect(res.body.task).to.not.have.property("requested");
    });

    it("refuses an approval that names a resource or scope the task does not hold, and leaves it pending", async () => {
      const taskId = await pendingTask([{ resource: "records", scopes: ["read"] }]);
      const wider = await approve(taskId, alice(), {
        resources: [{ resource: "records", scopes: ["read", "write"] }],
      });
      expect(wider.status).to.equal(422);
      expect(wider.body.error.code).to.equal("invalid_request");
      expect(wider.body.error.issues[0].path).to.equal("resources.0.scopes");
      const other = await approve(taskId, alice(), {
        resources: [{ resource: "demo-api", scopes: ["read"] }],
      });
      expect(other.status).to.equal(422);
      expect(other.body.error.issues[0].path).to.equal("resources.0.resource");
      const malformed = await approve(taskId, alice(), { resources: [] });
      expect(malformed.status).to.equal(400);
      expect((await t.broker.taskStore.get(taskId))?.status).to.equal("pending");
    });
  });

  describe("who may approve and mint", () => {
    it("never lets an agent approve a task, its own included", async () => {
      const taskId = await pendingTask([{ resource: "records", scopes: ["read"] }]);
      const res = await approve(taskId, agent.headers).expect(403);
      expect(res.body.error.code).to.equal("forbidden");
      expect((await t.broker.taskStore.get(taskId))?.status).to.equal("pending");
    });

    it("never lets an operator mint", async () => {
      const taskId = await createTask(t, agent, { resources: [{ resource: "records", scopes: ["read"] }] });
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(alice())
        .send({ resource: "records" })
        .expect(403);
      expect(res.body.error.code).to.equal("forbidden");
      expect(await t.redis.zcard(t.broker.keys.forId(taskId).taskLeases(taskId))).to.equal(0);
    });
  });

  describe("restricted data", () => {
    it("stays pending after one approval and is approved by a second, different operator", async () => {
      const taskId = await pendingTask([{ resource: "payroll", scopes: ["read"] }]);
      const first = await approve(taskId, alice(), { note: "looks fine" }).expect(200);
      expect(first.body.task).to.include({ status: "pending", approvalsRequired: 2 });
      expect(first.body.task.approvals.map((a: { by: string }) => a.by)).to.deep.equal(["alice"]);
      expect((await mint(taskId, { resource: "payroll" }).expect(409)).body.error.code).to.equal(
        "task_not_approved",
      );
      const recorded = eventOf(await auditEvents(t, { taskId }), "task_approval_recorded");
      expect(recorded).to.include({ actor: "operator:alice", approvals: 1, approvalsRequired: 2 });

      const second = await approve(taskId, bobHeaders(), { note: "agreed" }).expect(200);
      expect(second.body.task).to.include({ status: "approved", approvedBy: "bob" });
      expect(second.body.task.approvals.map((a: { by: string }) => a.by)).to.deep.equal(["alice", "bob"]);
      await mint(taskId, { resource: "payroll" }).expect(201);
      const approved = eventOf(await auditEvents(t, { taskId }), "task_approved");
      expect(approved).to.include({ actor: "operator:bob", approvals: 2 });
    });

    it("refuses the same operator's second approval with 409 duplicate_approval, on record", async () => {
      const taskId = await pendingTask([{ resource: "payroll", scopes: ["read"] }]);
      await approve(taskId, alice()).expect(200);
      const again = await approve(taskId, alice()).expect(409);
      expect(again.body.error.code).to.equal("duplicate_approval");
      expect((await t.broker.taskStore.get(taskId))?.status).to.equal("pending");
      const refused = eventOf(await auditEvents(t, { taskId }), "task_approval_refused");
      expect(refused).to.include({ actor: "operator:alice", decision: "deny" });
    });

    it("needs two operators for restricted data on a resource that is not restricted itself", async () => {
      const created = await t.http
        .post("/v1/tasks")
        .set(agent.headers)
        .send({
          goal: "Publish the salary bands",
          resources: [{ resource: "docs-api", scopes: ["read"] }],
          dataClassification: "restricted",
        })
        .expect(201);
      expect(created.body.task).to.include({ status: "pending", approvalsRequired: 2 });
      const first = await approve(created.body.task.id, alice()).expect(200);
      expect(first.body.task.status).to.equal("pending");
    });

    it("does not auto-approve restricted data, whatever the rule says", async () => {
      const auto = await agentSession(t, "auto-payroll");
      const created = await t.http
        .post("/v1/tasks")
        .set(auto.headers)
        .send({ goal: "Read payroll", resources: [{ resource: "payroll", scopes: ["read"] }] })
        .expect(201);
      expect(created.body.task).to.include({ status: "pending", approvalsRequired: 2 });
      const event = eventOf(await auditEvents(t, { taskId: created.body.task.id }), "task_created");
      expect(event.autoApproveWithheld).to.be.a("string");
      const plain = await t.http
        .post("/v1/tasks")
        .set(auto.headers)
        .send({ goal: "Read the demo api", resources: [{ resource: "demo-api", scopes: ["read"] }] })
        .expect(201);
      expect(plain.body.task.status).to.equal("approved");
    });

    it("lets the second operator narrow further but never widen what the first left", async () => {
      const taskId = await pendingTask([
        { resource: "payroll", scopes: ["read", "write"] },
        { resource: "docs-api", scopes: ["read"] },
      ]);
      await approve(taskId, alice(), {
        resources: [{ resource: "payroll", scopes: ["read", "write"] }],
      }).expect(200);
      const widen = await approve(taskId, bobHeaders(), {
        resources: [
          { resource: "payroll", scopes: ["read"] },
          { resource: "docs-api", scopes: ["read"] },
        ],
      });
      expect(widen.status).to.equal(422);
      expect(widen.body.error.code).to.equal("invalid_request");
      const res = await approve(taskId, bobHeaders(), {
        resources: [{ resource: "payroll", scopes: ["read"] }],
      }).expect(200);
      expect(res.body.task.status).to.equal("approved");
      expect(res.body.task.resources).to.deep.equal([
        { resource: "payroll", scopes: ["read"], owner: "finance" },
      ]);
      expect(res.body.task.requested.resources).to.have.length(2);
      expect(res.body.task.approvals[0].narrowedTo.resources).to.have.length(1);
      expect(res.body.task.approvals[1].narrowedTo.resources[0].scopes).to.deep.equal(["read"]);
    });

    it("ends with one denial, whatever approvals it already has", async () => {
      const taskId = await pendingTask([{ resource: "payroll", scopes: ["read"] }]);
      await approve(taskId, alice()).expect(200);
      const denied = await t.http
        .post(`/v1/tasks/${taskId}/deny`)
        .set(bobHeaders())
        .send({ note: "no" })
        .expect(200);
      expect(denied.body.task.status).to.equal("denied");
      expect((await approve(taskId, bobHeaders()).expect(409)).body.error.code).to.equal("task_closed");
    });

    it("counts two operators approving at once as two approvals, never as the same one", async () => {
      for (let round = 0; round < 3; round++) {
        const taskId = await pendingTask([{ resource: "payroll", scopes: ["read"] }]);
        const restore = readTogether(t, 2);
        const [a, b] = await Promise.all([approve(taskId, alice()), approve(taskId, bobHeaders())]).finally(
          restore,
        );
        expect([a.status, b.status]).to.deep.equal([200, 200]);
        const task = await t.broker.taskStore.get(taskId);
        expect(task?.status).to.equal("approved");
        expect(task?.approvals?.map((approval) => approval.by).sort()).to.deep.equal(["alice", "bob"]);
        expect(task?.approvalCount).to.equal(2);
      }
    });

    it("lets one operator approving twice at once count only once", async () => {
      for (let round = 0; round < 3; round++) {
        const taskId = await pendingTask([{ resource: "payroll", scopes: ["read"] }]);
        const restore = readTogether(t, 2);
        const answers = await Promise.all([approve(taskId, alice()), approve(taskId, alice())]).finally(
          restore,
        );
        expect(answers.map((res) => res.status).sort()).to.deep.equal([200, 409]);
        const task = await t.broker.taskStore.get(taskId);
        expect(task?.status).to.equal("pending");
        expect(task?.approvals).to.have.length(1);
      }
    });
  });
});
