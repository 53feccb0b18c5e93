import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { ChildBroker } from "../helpers/child-process.ts";
import { agentSession, createTask, leaseReaches, mintLease } from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";

describe("crash recovery with real processes", function () {
  this.timeout(30_000);
  let t: TestBroker | undefined;
  let child: ChildBroker | undefined;
  afterEach(async () => {
    await child?.kill();
    child = undefined;
    await t?.close();
    t = undefined;
  });

  it("finishes a revocation whose worker process was killed mid-revoke", async () => {
    t = await startTestBroker({ name: "crash-revoke", workers: false });
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);

    child = ChildBroker.start(t, { JITKEY_CHILD_MODE: "revoke-worker" });
    await child.waitForLine(/^ready$/, 15_000);
    const done = await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
    expect(done.body.revoking).to.equal(1);
    const [, revoking] = await child.waitForLine(/^revoking (\S+)$/, 5000);
    expect(revoking).to.equal(lease.id);

    await child.kill();
    expect(child.running).to.equal(false);
    expect((await t.broker.leaseStore.get(lease.id))?.status).to.equal("revoking");
    expect(await t.recording.liveArtifacts()).to.deep.equal([lease.id]);

    // The dead worker's lock lapses; a worker here takes the stalled job over.
    await t.broker.startWorkers({ lockDurationMs: 1000, stalledIntervalMs: 500 });
    const revoked = await leaseReaches(t, lease.id, "revoked", 10_000);
    expect(revoked.revokeReason).to.equal("task_completed");
    expect(t.recording.revokeCalls).to.equal(1);
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
  });

  it("revokes what a broker killed mid-issue had created, by lease id", async () => {
    const clock = new ManualClock();
    t = await startTestBroker({ name: "crash-mint", workers: false, clock });
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);

    child = ChildBroker.start(t, {
      JITKEY_CHILD_MODE: "mint",
      JITKEY_CHILD_TASK_ID: taskId,
      JITKEY_CHILD_AGENT_ID: agent.agentId,
      JITKEY_CHILD_MINTS: "2",
    });
    await child.waitForLine(/^ready$/, 15_000);
    const current = child;
    await eventually(
      async () => current.lines.filter((line) => line.startsWith("issued ")).length === 2,
      5000,
    );
    await child.kill();
    const leaseIds = child.lines.filter((line) => line.startsWith("issued ")).map((line) => line.slice(7));
    expect(child.lines.filter((line) => line.startsWith("mint failed"))).to.deep.equal([]);

    // What the dead broker left: leases stuck in `issuing`, artifacts named after them.
    expect((await t.recording.liveArtifacts()).sort()).to.deep.equal([...leaseIds].sort());
    for (const leaseId of leaseIds)
      expect((await t.broker.leaseStore.get(leaseId))?.status).to.equal("issuing");

    // The child stamped issuedAt with the real clock, which may have run past the manual one
    // under load: move to a moment stale for every lease it wrote.
    const store = t.broker.leaseStore;
    const leases = await Promise.all(leaseIds.map((leaseId) => store.get(leaseId)));
    const lastIssued = Math.max(...leases.map((lease) => Date.parse(lease?.issuedAt ?? "")));
    clock.advance(
      Math.max(lastIssued, clock.now()) - clock.now() + (t.config.revocation.staleSeconds + 1) * 1000,
    );
    expect((await t.broker.sweeper.sweepOnce()).leases).to.equal(2);
    await t.broker.startWorkers({ lockDurationMs: 1000, stalledIntervalMs: 500 });
    for (const leaseId of leaseIds) {
      const revoked = await leaseReaches(t, leaseId, "revoked", 10_000);
      expect(revoked.revokeReason).to.equal("issue_failed");
    }
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    const shard = t.broker.keys.forId(taskId);
    for (const index of [shard.liveLeases, shard.revokingLeases, shard.failedLeases])
      expect(await t.redis.zcard(index), index).to.equal(0);
  });
});
