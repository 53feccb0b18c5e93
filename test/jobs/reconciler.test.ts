import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import type { AgentPrincipal } from "../../broker/identity/principal.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

describe("reconciler: listing indexes trimmed by retention", () => {
  let t: TestBroker;
  let clock: ManualClock;
  beforeEach(async () => {
    clock = new ManualClock();
    t = await startTestBroker({ name: "reconciler", workers: false, clock });
  });
  afterEach(async () => {
    await t.close();
  });

  // In-process, past HTTP: the clock moves a month, further than any agent token lives.
  const agent: AgentPrincipal = { kind: "agent", id: "ci:repo:acme/app", issuer: "ci" };
  const taskWithLease = async () => {
    const task = await t.broker.tasks.create(agent, {
      goal: "read the reports",
      resources: [{ resource: "demo-api", scopes: ["read"] }],
      ttlSeconds: 600,
    });
    expect(task.status).to.equal("approved");
    const { lease } = await t.broker.leases.mint(agent, task.id, { resource: "demo-api", ttlSeconds: 60 });
    return { taskId: task.id, leaseId: lease.id };
  };
  const listed = async ({ taskId, leaseId }: { taskId: string; leaseId: string }) => {
    const tasks = t.broker.keys.forId(taskId);
    const leases = t.broker.keys.forId(leaseId);
    return [
      await t.redis.zscore(tasks.allTasks, taskId),
      await t.redis.zscore(leases.allLeases, leaseId),
      await t.redis.zscore(leases.resourceLeases("demo-api"), leaseId),
    ].map((score) => score !== null);
  };

  it("drops ids older than the lease record retention and keeps the rest", async () => {
    const old = await taskWithLease();
    const retentionMs = t.config.retention.leaseRecordDays * 86_400_000;

    clock.advance(retentionMs - 60_000);
    expect(await t.broker.reconciler.run()).to.deep.equal({ orphans: 0, trimmed: 0 });
    const recent = await taskWithLease();

    clock.advance(120_000);
    // The old task and its lease leave every listing index: tasks, leases, the resource's.
    expect(await t.broker.reconciler.run()).to.deep.equal({ orphans: 0, trimmed: 3 });
    expect(await listed(old)).to.deep.equal([false, false, false]);
    expect(await listed(recent)).to.deep.equal([true, true, true]);
    expect(await t.broker.reconciler.run()).to.deep.equal({ orphans: 0, trimmed: 0 });
  });
});
