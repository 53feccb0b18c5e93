import { UnrecoverableError, Worker } from "bullmq";
import { expect } from "chai";
import { Redis } from "ioredis";
import type { Response } from "supertest";
import { ManualClock } from "../../broker/clock.ts";
import { newId } from "../../broker/ids.ts";
import { DueSweeper } from "../../jobs/due-sweeper.ts";
import { REVOCATION_QUEUE } from "../../jobs/queues.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import {
  agentSession,
  createTask,
  leaseReaches,
  mintLease,
  operatorHeaders,
  writeStrandedLease,
} from "../helpers/flows.ts";
import { eventually, testRedisUrl } from "../helpers/redis.ts";

/** Takes the next job as a bare worker would and fails it for good, bypassing the broker. */
async function failNextJobOutsideTheBroker(t: TestBroker): Promise<void> {
  const connection = new Redis(testRedisUrl(), { maxRetriesPerRequest: null });
  const worker = new Worker(REVOCATION_QUEUE, null, { connection, prefix: t.broker.keys.queuePrefix });
  try {
    const token = "test-token";
    const job = await worker.getNextJob(token, { block: false });
    expect(job?.name).to.equal("settle-leases");
    await job?.moveToFailed(new UnrecoverableError("job stalled more than allowable limit"), token);
  } finally {
    await worker.close();
    connection.disconnect();
  }
}

/**
 * Starts a mint whose adapter stops inside `issue` until released: a broker slow or stuck
 * mid-issue. `leaseId()` resolves once the adapter holds; `cleanup()` lets everything finish.
 */
function holdMintInIssue(t: TestBroker, agent: { headers: Record<string, string> }, taskId: string) {
  let release: () => void = () => {};
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let held: string | undefined;
  t.recording.onIssue = async (request) => {
    held = request.leaseId;
    await gate;
  };
  const answer: Promise<Response> = t.http
    .post(`/v1/tasks/${taskId}/leases`)
    .set(agent.headers)
    .send({ resource: "records" })
    .then((res) => res);
  return {
    answer,
    release: () => release(),
    leaseId: () => eventually(async () => held, 5000),
    async cleanup() {
      release();
      t.recording.onIssue = undefined;
      await answer.catch(() => undefined);
    },
  };
}

describe("due sweeper: expiry, stalled and failed revocations, task expiry", () => {
  let t: TestBroker;
  let clock: ManualClock;
  beforeEach(async () => {
    clock = new ManualClock();
    t = await startTestBroker({ name: "sweeper", workers: false, clock });
  });
  afterEach(async () => {
    await t.close();
  });

  const staleMs = () => (t.config.revocation.staleSeconds + 1) * 1000;
  // The test sweeps by hand, so what is claimed when is under its control.
  const startWorker = () =>
    t.broker.startWorkers({ lockDurationMs: 2000, stalledIntervalMs: 1000, sweep: false });
  const sweep = () => t.broker.sweeper.sweepOnce();
  const dropQueuedJobs = () => t.broker.queue.queue.drain(true);
  const shardOf = (id: string) => t.broker.keys.forId(id);

  it("claims nothing before anything is due, and schedules no job per lease", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    await mintLease(t, agent, taskId, { ttlSeconds: 60 });
    await t.http.delete(`/v1/leases/${(await mintLease(t, agent, taskId)).lease.id}`).set(agent.headers);
    expect(await sweep()).to.include({ leases: 0, tasks: 0 });
    const counts = await t.broker.queue.queue.getJobCounts("delayed", "waiting");
    // Only the release's job waits; expiry is a score in the due index, not a delayed job.
    expect(counts).to.deep.equal({ delayed: 0, waiting: 1 });
  });

  it("revokes a lease at its expiry", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId, { ttlSeconds: 60 });
    clock.advance(59_000);
    // Nothing due yet, and the pass says when the lease will be.
    expect(await sweep()).to.deep.equal({ leases: 0, tasks: 0, nextDueAt: Date.parse(lease.expiresAt) });
    clock.advance(2_000);
    expect(await sweep()).to.include({ leases: 1, tasks: 0 });
    await startWorker();
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked).to.include({ revokeReason: "expired", revokeRequestedAt: lease.expiresAt });
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    const shard = shardOf(lease.id);
    for (const index of [shard.liveLeases, shard.revokingLeases, shard.failedLeases])
      expect(await t.redis.zscore(index, lease.id), index).to.equal(null);
  });

  it("revokes a lease a crashed broker left in issuing, once it is older than staleSeconds", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const leaseId = newId("lse", { sameShardAs: taskId });
    const now = clock.now();
    await writeStrandedLease(
      t,
      { id: leaseId, taskId, agentId: agent.agentId, issuedAt: now, expiresAt: now + 600_000 },
      { artifact: true },
    );
    // A mint may still be in flight: too young to touch.
    expect((await sweep()).leases).to.equal(0);
    clock.advance(staleMs());
    expect((await sweep()).leases).to.equal(1);
    await startWorker();
    expect((await leaseReaches(t, leaseId, "revoked")).revokeReason).to.equal("issue_failed");
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
  });

  it("revokes an issuing lease whose adapter answers only after the lease was given up", async () => {
    await startWorker();
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const mint = holdMintInIssue(t, agent, taskId);
    try {
      const leaseId = await mint.leaseId();
      clock.advance(staleMs());
      expect((await sweep()).leases).to.equal(1);
      expect((await leaseReaches(t, leaseId, "revoked")).revokeReason).to.equal("issue_failed");

      // The adapter finally creates the credential: it must not outlive its revoked lease.
      mint.release();
      const res = await mint.answer;
      expect(res.status).to.equal(409);
      expect(res.body.error.code).to.equal("lease_revoked");
      await eventually(async () => (await t.recording.liveArtifacts()).length === 0, 5000);
      expect((await t.broker.leaseStore.get(leaseId))?.status).to.equal("revoked");
    } finally {
      await mint.cleanup();
    }
  });

  it("retries a late credential whose revocation failed, after the task completed mid-issue", async () => {
    await startWorker();
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const mint = holdMintInIssue(t, agent, taskId);
    try {
      const leaseId = await mint.leaseId();
      const done = await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
      expect(done.body.revoking).to.equal(1);
      await leaseReaches(t, leaseId, "revoked");

      t.recording.revokePermanent = true;
      mint.release();
      expect((await mint.answer).body.error.code).to.equal("task_closed");
      const failed = await t.broker.leaseStore.get(leaseId);
      expect(failed).to.include({ status: "revoke_failed", handle: `artifact/${leaseId}` });
      // Live again: no retention expiry on the record, and in the failed index for a retry.
      const shard = shardOf(leaseId);
      expect(await t.redis.ttl(shard.lease(leaseId))).to.equal(-1);
      expect(await t.redis.zscore(shard.failedLeases, leaseId)).to.not.equal(null);
      expect(await t.recording.liveArtifacts()).to.deep.equal([leaseId]);

      t.recording.revokePermanent = false;
      expect((await sweep()).leases).to.equal(0);
      clock.advance((t.config.revocation.retryFailedAfterSeconds + 1) * 1000);
      expect((await sweep()).leases).to.equal(1);
      expect((await leaseReaches(t, leaseId, "revoked")).revokeReason).to.equal("task_completed");
      expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    } finally {
      t.recording.revokePermanent = false;
      await mint.cleanup();
    }
  });

  it("claims a revocation again when its job was lost, once staleSeconds pass", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    await dropQueuedJobs();
    expect((await sweep()).leases).to.equal(0);
    clock.advance(staleMs());
    expect((await sweep()).leases).to.equal(1);
    await startWorker();
    expect((await leaseReaches(t, lease.id, "revoked")).revokeReason).to.equal("released");
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
  });

  it("re-runs a revocation whose job failed for good without settling the lease", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    // What BullMQ does to a job that stalled past maxStalledCount: failed, and the lease never heard.
    await failNextJobOutsideTheBroker(t);
    clock.advance(staleMs());
    expect((await sweep()).leases).to.equal(1);
    await startWorker();
    expect((await leaseReaches(t, lease.id, "revoked")).revokeReason).to.equal("released");
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
  });

  it("expires a task at its expiry and revokes its leases", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { ttlSeconds: 30 });
    const { lease } = await mintLease(t, agent, taskId);
    expect(await sweep()).to.include({ leases: 0, tasks: 0 });
    clock.advance(31_000);
    // The lease cannot outlive its task, so it is due too; whichever path comes first revokes it.
    expect(await sweep()).to.include({ leases: 1, tasks: 1 });
    await startWorker();
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked.revokeReason).to.equal("expired");
    await eventually(async () => {
      const task = await t.http.get(`/v1/tasks/${taskId}`).set(operatorHeaders(t)).expect(200);
      return task.body.task.status === "expired";
    });
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    expect(await t.redis.zscore(shardOf(taskId).liveTasks, taskId)).to.equal(null);
  });

  it("marks a lease revoke_failed on a permanent error and retries it after retryFailedAfterSeconds", async () => {
    await startWorker();
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    t.recording.revokePermanent = true;
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    const failed = await leaseReaches(t, lease.id, "revoke_failed");
    expect(t.recording.revokeCalls).to.equal(1);
    expect(failed.lastError).to.match(/permission denied/);
    t.recording.revokePermanent = false;
    clock.advance((t.config.revocation.retryFailedAfterSeconds - 1) * 1000);
    expect((await sweep()).leases).to.equal(0);
    clock.advance(2_000);
    expect((await sweep()).leases).to.equal(1);
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked).to.include({ revokeReason: "released", revokeRequestedBy: `agent:${agent.agentId}` });
    expect(revoked.revokeRound).to.equal(2);
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
  });

  it("tidies a revoked lease found in a due index, handle included", async () => {
    await startWorker();
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    await leaseReaches(t, lease.id, "revoked");
    const shard = shardOf(lease.id);
    await t.redis.zadd(shard.liveLeases, clock.now(), lease.id);
    await t.redis.hset(shard.handles("records"), `artifact/${lease.id}`, lease.id);
    expect((await sweep()).leases).to.equal(1);
    await eventually(async () => (await t.redis.zscore(shard.revokingLeases, lease.id)) === null);
    expect(await t.redis.zscore(shard.liveLeases, lease.id)).to.equal(null);
    expect(await t.redis.hexists(shard.handles("records"), `artifact/${lease.id}`)).to.equal(0);
    expect(t.recording.revokeCalls).to.equal(1);
  });

  it("lets two sweepers claim each due member exactly once", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    for (let i = 0; i < 12; i++) await mintLease(t, agent, taskId, { ttlSeconds: 60 });
    clock.advance(61_000);
    const second = new DueSweeper({
      redis: t.broker.redis,
      keys: t.broker.keys,
      queue: t.broker.queue,
      clock,
      logger: t.broker.logger,
      staleMs: staleMs(),
      batch: 3,
    });
    const claims = await Promise.all([sweep(), second.sweepOnce(), sweep(), second.sweepOnce()]);
    expect(claims.reduce((sum, claim) => sum + claim.leases, 0)).to.equal(12);
    await startWorker();
    await eventually(
      async () => (await t.broker.leases.list({ status: "revoked", limit: 100 })).length === 12,
    );
    expect(t.recording.revokeCalls).to.equal(12);
  });
});

describe("due sweeper, running: wakes when the next member falls due", () => {
  let t: TestBroker;
  beforeEach(async () => {
    t = await startTestBroker({ name: "sweeper-wake", workers: false });
  });
  afterEach(async () => {
    await t.close();
  });

  it("claims a lease as it expires, not an idle pause later", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId, { ttlSeconds: 2 });
    // Idle passes 30 s apart: only a wake-up at the lease's expiry claims it within the test.
    const sweeper = new DueSweeper({
      redis: t.broker.redis,
      keys: t.broker.keys,
      queue: t.broker.queue,
      clock: { now: () => Date.now() },
      logger: t.broker.logger,
      staleMs: 60_000,
      idleMs: 30_000,
    });
    sweeper.start();
    try {
      const index = t.broker.keys.forId(lease.id).revokingLeases;
      const claimedAt = await eventually(
        async () => ((await t.redis.zscore(index, lease.id)) !== null ? Date.now() : undefined),
        10_000,
        5,
      );
      const expiresAt = Date.parse(lease.expiresAt);
      expect(claimedAt, "claimed at or after the expiry").to.be.at.least(expiresAt);
      expect(claimedAt - expiresAt, "ms from expiry to claim").to.be.below(1000);
    } finally {
      await sweeper.stop();
    }
  });
});
