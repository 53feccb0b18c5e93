import { UnrecoverableError, Worker } from "bullmq";
import { expect } from "chai";
import { Redis } from "ioredis";
import type { Response } from "supertest";
import { ManualClock } from "../../broker/clock.ts";
import { newId } from "../../broker/ids.ts";
import { jobIds, REVOCATION_QUEUE } from "../../jobs/queues.ts";
import { emptyReport, type ReconcileReport } from "../../jobs/reconciler.ts";
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

/** Takes job `jobId` as a bare worker would and fails it for good, bypassing the lease service. */
async function failJobOutsideTheBroker(t: TestBroker, jobId: string): Promise<void> {
  const connection = new Redis(testRedisUrl(), { maxRetriesPerRequest: null });
  const worker = new Worker(REVOCATION_QUEUE, null, { connection, prefix: t.broker.keys.queuePrefix });
  try {
    const token = "test-token";
    const job = await worker.getNextJob(token, { block: false });
    expect(job?.id).to.equal(jobId);
    await job?.moveToFailed(new UnrecoverableError("job stalled more than allowable limit"), token);
  } finally {
    await worker.close();
    connection.disconnect();
  }
}

const NOTHING: ReconcileReport = emptyReport();

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

describe("reconciler", () => {
  let t: TestBroker;
  let clock: ManualClock;
  beforeEach(async () => {
    clock = new ManualClock();
    t = await startTestBroker({ name: "reconciler", workers: false, clock });
  });
  afterEach(async () => {
    await t.close();
  });

  const staleMs = () => (t.config.revocation.staleSeconds + 1) * 1000;
  const startWorker = () => t.broker.startWorkers({ lockDurationMs: 2000, stalledIntervalMs: 1000 });
  const jobExists = async (id: string) => (await t.broker.queue.queue.getJob(id)) !== undefined;

  it("does nothing when every lease and task has its job", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${(await mintLease(t, agent, taskId)).lease.id}`).set(agent.headers);
    expect(await t.broker.reconciler.run()).to.deep.equal(NOTHING);
  });

  it("revokes a lease past expiry whose delayed job was lost", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId, { ttlSeconds: 60 });
    expect(await t.broker.queue.queue.remove(jobIds.leaseExpiry(lease.id))).to.equal(1);

    // Not yet due: left alone.
    expect((await t.broker.reconciler.run()).expiredLeases).to.equal(0);
    clock.advance(61_000);
    const report = await t.broker.reconciler.run();
    expect(report).to.deep.equal({ ...NOTHING, expiredLeases: 1 });
    const revoking = await t.broker.leaseStore.get(lease.id);
    expect(revoking).to.include({ status: "revoking", revokeReason: "expired" });
    expect(revoking?.revokeRequestedAt).to.equal(lease.expiresAt);

    await startWorker();
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked.revokeReason).to.equal("expired");
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    expect(await t.redis.zscore(t.broker.keys.liveLeases, lease.id)).to.equal(null);
  });

  it("revokes a lease a crashed broker left in issuing, once it is older than staleSeconds", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const leaseId = newId("lse");
    const now = clock.now();
    await writeStrandedLease(
      t,
      { id: leaseId, taskId, agentId: agent.agentId, issuedAt: now, expiresAt: now + 600_000 },
      { artifact: true },
    );

    // A mint may still be in flight: too young to touch.
    expect((await t.broker.reconciler.run()).staleIssuing).to.equal(0);
    expect((await t.broker.leaseStore.get(leaseId))?.status).to.equal("issuing");
    clock.advance(staleMs());
    expect(await t.broker.reconciler.run()).to.deep.equal({ ...NOTHING, staleIssuing: 1 });

    await startWorker();
    const revoked = await leaseReaches(t, leaseId, "revoked");
    expect(revoked.revokeReason).to.equal("issue_failed");
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
      expect((await t.broker.reconciler.run()).staleIssuing).to.equal(1);
      const revoked = await leaseReaches(t, leaseId, "revoked");
      expect(revoked.revokeReason).to.equal("issue_failed");

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
      // Live again: no retention expiry on the record, and back in the live index.
      expect(await t.redis.ttl(t.broker.keys.lease(leaseId))).to.equal(-1);
      expect(await t.redis.zscore(t.broker.keys.liveLeases, leaseId)).to.not.equal(null);
      expect(await t.recording.liveArtifacts()).to.deep.equal([leaseId]);

      t.recording.revokePermanent = false;
      clock.advance((t.config.revocation.retryFailedAfterSeconds + 1) * 1000);
      expect((await t.broker.reconciler.run()).retriedFailed).to.equal(1);
      const revoked = await leaseReaches(t, leaseId, "revoked");
      expect(revoked.revokeReason).to.equal("task_completed");
      expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    } finally {
      t.recording.revokePermanent = false;
      await mint.cleanup();
    }
  });

  it("finishes tidying a revoked lease a crash left in the live index with its handle", async () => {
    await startWorker();
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    await leaseReaches(t, lease.id, "revoked");
    // What a crash right after the revoked write leaves: still indexed as live, handle owned, no expiry.
    const keys = t.broker.keys;
    await t.redis.zadd(keys.liveLeases, Date.parse(lease.expiresAt), lease.id);
    await t.redis.hset(keys.resourceHandles("records"), `artifact/${lease.id}`, lease.id);
    await t.redis.persist(keys.lease(lease.id));

    expect(await t.broker.reconciler.run()).to.deep.equal({ ...NOTHING, tidied: 1 });
    expect(await t.redis.zscore(keys.liveLeases, lease.id)).to.equal(null);
    expect(await t.redis.hexists(keys.resourceHandles("records"), `artifact/${lease.id}`)).to.equal(0);
    expect(await t.redis.ttl(keys.lease(lease.id))).to.be.greaterThan(0);
    expect(await t.broker.reconciler.run()).to.deep.equal(NOTHING);
  });

  it("re-enqueues a lease stuck in revoking whose job is gone", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    const jobId = jobIds.revokeRound(lease.id, 1);
    expect(await t.broker.queue.queue.remove(jobId)).to.equal(1);

    expect((await t.broker.reconciler.run()).requeued).to.equal(0);
    expect(await jobExists(jobId)).to.equal(false);
    clock.advance(staleMs());
    expect(await t.broker.reconciler.run()).to.deep.equal({ ...NOTHING, requeued: 1 });
    expect(await jobExists(jobId)).to.equal(true);

    await startWorker();
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked.revokeReason).to.equal("released");
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
  });

  it("re-runs a revocation round whose job failed without settling the lease", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    const jobId = jobIds.revokeRound(lease.id, 1);
    // What BullMQ does to a job that stalled past maxStalledCount: failed, and the lease never heard.
    await failJobOutsideTheBroker(t, jobId);
    expect(await t.broker.queue.queue.getJobState(jobId)).to.equal("failed");

    clock.advance(staleMs());
    expect((await t.broker.reconciler.run()).requeued).to.equal(1);
    await startWorker();
    expect((await leaseReaches(t, lease.id, "revoked")).revokeReason).to.equal("released");
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
  });

  it("expires a task past expiry whose expiry job was lost and revokes its leases", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { ttlSeconds: 30 });
    const { lease } = await mintLease(t, agent, taskId);
    expect(await t.broker.queue.queue.remove(jobIds.taskExpiry(taskId))).to.equal(1);

    expect((await t.broker.reconciler.run()).expiredTasks).to.equal(0);
    clock.advance(31_000);
    const report = await t.broker.reconciler.run();
    expect(report.expiredTasks).to.equal(1);
    // The lease cannot outlive its task, so it is past expiry too; one of the two paths revokes it.
    expect(report.expiredLeases).to.equal(1);
    const task = await t.http.get(`/v1/tasks/${taskId}`).set(operatorHeaders(t)).expect(200);
    expect(task.body.task.status).to.equal("expired");

    await startWorker();
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked.revokeReason).to.equal("expired");
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    expect(await t.redis.zscore(t.broker.keys.liveTasks, taskId)).to.equal(null);
  });

  it("finishes its pass when a failed lease was already sent back to revoking by an operator", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const expiring = await createTask(t, agent, { ttlSeconds: 30 });
    await t.broker.queue.queue.remove(jobIds.taskExpiry(expiring));
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    t.recording.revokePermanent = true;
    const failed = t.broker.leases.revokeFromJob(lease.id, { expiry: false, final: true });
    await failed.then(
      () => expect.fail("revoke should have failed"),
      () => undefined,
    );
    t.recording.revokePermanent = false;
    expect((await t.broker.leaseStore.get(lease.id))?.status).to.equal("revoke_failed");
    // The operator retries by hand; no worker has run the new round yet.
    await t.http.delete(`/v1/leases/${lease.id}`).set(operatorHeaders(t)).expect(202);
    expect((await t.broker.leaseStore.get(lease.id))?.status).to.equal("revoking");

    clock.advance((t.config.revocation.retryFailedAfterSeconds + 1) * 1000);
    const report = await t.broker.reconciler.run();
    expect(report.retriedFailed).to.equal(0);
    expect(report.expiredTasks).to.equal(1);
    expect((await t.broker.taskStore.get(expiring))?.status).to.equal("expired");

    await startWorker();
    expect((await leaseReaches(t, lease.id, "revoked")).revokeReason).to.equal("released");
    expect(await t.redis.zcard(t.broker.keys.failedLeases)).to.equal(0);
  });

  it("counts every kind of repair in one pass, then finds nothing left to do", async () => {
    const agent = await agentSession(t);
    const longTask = await createTask(t, agent);
    const shortTask = await createTask(t, agent, { ttlSeconds: 30 });
    const lostExpiry = (await mintLease(t, agent, longTask, { ttlSeconds: 60 })).lease;
    const lostRevoke = (await mintLease(t, agent, longTask)).lease;
    const failed = (await mintLease(t, agent, longTask)).lease;
    const onShortTask = (await mintLease(t, agent, shortTask)).lease;
    const stranded = newId("lse");
    const queue = t.broker.queue.queue;

    await queue.remove(jobIds.leaseExpiry(lostExpiry.id));
    await t.http.delete(`/v1/leases/${lostRevoke.id}`).set(agent.headers).expect(202);
    await queue.remove(jobIds.revokeRound(lostRevoke.id, 1));
    await t.http.delete(`/v1/leases/${failed.id}`).set(agent.headers).expect(202);
    t.recording.revokePermanent = true;
    let error: unknown;
    try {
      await t.broker.leases.revokeFromJob(failed.id, { expiry: false, final: true });
    } catch (caught) {
      error = caught;
    }
    expect(error).to.be.instanceOf(Error);
    t.recording.revokePermanent = false;
    expect((await t.broker.leaseStore.get(failed.id))?.status).to.equal("revoke_failed");
    await queue.remove(jobIds.revokeRound(failed.id, 1));
    await queue.remove(jobIds.taskExpiry(shortTask));
    await queue.remove(jobIds.leaseExpiry(onShortTask.id));
    const now = clock.now();
    await writeStrandedLease(
      t,
      { id: stranded, taskId: longTask, agentId: agent.agentId, issuedAt: now, expiresAt: now + 600_000 },
      { artifact: true },
    );

    clock.advance((t.config.revocation.retryFailedAfterSeconds + 1) * 1000);
    expect(await t.broker.reconciler.run()).to.deep.equal({
      expiredLeases: 2,
      staleIssuing: 1,
      requeued: 1,
      retriedFailed: 1,
      expiredTasks: 1,
      orphans: 0,
      tidied: 0,
    });
    const reconciled = await t.broker.metrics.registry.getSingleMetricAsString(
      "jitkey_reconciler_actions_total",
    );
    expect(reconciled).to.include('jitkey_reconciler_actions_total{action="staleIssuing"} 1');

    await startWorker();
    const expected = {
      [lostExpiry.id]: "expired",
      [lostRevoke.id]: "released",
      [failed.id]: "released",
      [onShortTask.id]: "expired",
      [stranded]: "issue_failed",
    };
    for (const [leaseId, reason] of Object.entries(expected))
      expect((await leaseReaches(t, leaseId, "revoked")).revokeReason, leaseId).to.equal(reason);
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);
    expect(await t.redis.zcard(t.broker.keys.liveLeases)).to.equal(0);
    expect(await t.redis.zcard(t.broker.keys.failedLeases)).to.equal(0);
    expect(await t.broker.reconciler.run()).to.deep.equal(NOTHING);
  });
});
