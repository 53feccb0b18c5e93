import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, mintLease } from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";

/**
 * Several revocation jobs may hold the same lease: the due sweeper hands a revocation that
 * looks stalled to a new job while the first is still queued or running, and BullMQ re-runs
 * a job whose worker went quiet. Only one of them may be at the adapter at a time.
 */
describe("one revocation attempt at a time per lease, across jobs and workers", () => {
  let t: TestBroker;
  let clock: ManualClock;
  beforeEach(async () => {
    clock = new ManualClock();
    t = await startTestBroker({ name: "revoke-once", workers: false, clock });
  });
  afterEach(async () => {
    await t.close();
  });

  /** A live lease whose release has been asked for: `revoking`, with its job queued. */
  const releasedLease = async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    return lease.id;
  };
  /** Holds every revoke at the adapter until `open()` is called. */
  const holdRevokes = () => {
    let open = () => {};
    t.recording.revokeGate = new Promise<void>((resolve) => {
      open = resolve;
    });
    return () => {
      t.recording.revokeGate = undefined;
      open();
    };
  };
  /** The next revoke hangs for good, as in a worker that died mid-call; later ones go through. */
  const hangNextRevoke = async (leaseId: string, settle: () => Promise<unknown>) => {
    t.recording.revokeGate = new Promise<void>(() => {});
    void settle();
    await eventually(async () => calls(leaseId) === 1);
    t.recording.revokeGate = undefined;
  };
  const calls = (leaseId: string) => t.recording.revokeCallsByLease.get(leaseId) ?? 0;
  const staleMs = () => t.config.revocation.staleSeconds * 1000;

  it("leaves a lease to the job already revoking it: two jobs, one adapter call", async () => {
    const leaseId = await releasedLease();
    const open = holdRevokes();
    const first = t.broker.revoker.settle([leaseId], "job-1");
    await eventually(async () => calls(leaseId) === 1);
    const second = await t.broker.revoker.settle([leaseId], "job-2");
    expect(second).to.include({ revoked: 0, busy: 1 });
    expect(calls(leaseId)).to.equal(1);
    open();
    expect((await first).revoked).to.equal(1);
    expect((await t.broker.leaseStore.get(leaseId))?.status).to.equal("revoked");
    expect(calls(leaseId)).to.equal(1);
  });

  it("lets another job try again once the attempt under way is older than staleSeconds", async () => {
    const leaseId = await releasedLease();
    // A worker that took the lease and then went silent (hung, or killed mid-call).
    await hangNextRevoke(leaseId, () => t.broker.revoker.settle([leaseId], "job-1"));
    expect((await t.broker.revoker.settle([leaseId], "job-2")).busy).to.equal(1);
    clock.advance(staleMs());
    expect((await t.broker.revoker.settle([leaseId], "job-2")).revoked).to.equal(1);
    expect(calls(leaseId)).to.equal(2);
    expect((await t.broker.leaseStore.get(leaseId))?.status).to.equal("revoked");
  });

  it("lets a re-run of the same job take over its own attempt at once (BullMQ re-runs a job whose worker died)", async () => {
    const leaseId = await releasedLease();
    await hangNextRevoke(leaseId, () => t.broker.revoker.settle([leaseId], "job-7"));
    expect((await t.broker.revoker.settle([leaseId], "job-7")).revoked).to.equal(1);
    expect(calls(leaseId)).to.equal(2);
  });

  it("tries again after a failed attempt without waiting for staleSeconds", async () => {
    const leaseId = await releasedLease();
    t.recording.revokeFailures = 1;
    expect((await t.broker.revoker.settle([leaseId])).retrying).to.equal(1);
    clock.advance(t.config.revocation.backoffMs);
    expect((await t.broker.revoker.settle([leaseId])).revoked).to.equal(1);
    expect(calls(leaseId)).to.equal(2);
  });
});
