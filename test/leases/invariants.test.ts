import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import type { Lease } from "../../broker/leases/lease.ts";
import { createLogger } from "../../broker/logger.ts";
import { CapturedLogs, startTestBroker, type TestBroker } from "../helpers/broker.ts";
import {
  agentSession,
  auditEvents,
  createTask,
  eventOf,
  leaseReaches,
  leasesInDueIndexes,
  metricValue,
  mintLease,
  operatorHeaders,
} from "../helpers/flows.ts";
import { dumpPrefix, eventually } from "../helpers/redis.ts";

describe("invariant: no credential without a verified identity and an approved, live task", () => {
  let t: TestBroker;
  let clock: ManualClock;
  beforeEach(async () => {
    clock = new ManualClock();
    t = await startTestBroker({ name: "inv-approved", clock });
  });
  afterEach(async () => {
    await t.close();
  });

  it("refuses a pending task with task_not_approved and never calls the adapter", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { approve: false });
    const res = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .send({ resource: "records" })
      .expect(409);
    expect(res.body.error.code).to.equal("task_not_approved");
    expect(t.recording.issueCalls).to.equal(0);
  });

  it("refuses denied, completed, expired and operator-revoked tasks with task_closed", async () => {
    const agent = await agentSession(t);
    const op = operatorHeaders(t);

    const denied = await createTask(t, agent, { approve: false });
    await t.http.post(`/v1/tasks/${denied}/deny`).set(op).send({ note: "no" }).expect(200);
    const completed = await createTask(t, agent);
    await t.http.post(`/v1/tasks/${completed}/complete`).set(agent.headers).expect(200);
    const revoked = await createTask(t, agent);
    await t.http.post("/v1/revocations").set(op).send({ taskId: revoked, reason: "incident" }).expect(202);
    const expiring = await createTask(t, agent, { ttlSeconds: 60 });

    for (const taskId of [denied, completed, revoked]) {
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(agent.headers)
        .send({ resource: "records" })
        .expect(409);
      expect(res.body.error.code, taskId).to.equal("task_closed");
    }
    // Still `approved` in Redis (its expiry job has not run), but its time is up.
    clock.advance(61_000);
    expect((await t.broker.taskStore.get(expiring))?.status).to.equal("approved");
    const res = await t.http
      .post(`/v1/tasks/${expiring}/leases`)
      .set(agent.headers)
      .send({ resource: "records" })
      .expect(409);
    expect(res.body.error.code).to.equal("task_closed");
    expect(t.recording.issueCalls).to.equal(0);
  });

  it("refuses to mint for another agent's task with forbidden", async () => {
    const owner = await agentSession(t, "agent-owner");
    const other = await agentSession(t, "agent-other");
    const taskId = await createTask(t, owner);
    const res = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(other.headers)
      .send({ resource: "records" })
      .expect(403);
    expect(res.body.error.code).to.equal("forbidden");
    expect(t.recording.issueCalls).to.equal(0);
  });

  it("refuses a request without a verified identity", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const forged = `${(await t.agentToken("agent-worker")).slice(0, -4)}AAAA`;
    for (const headers of [{}, { Authorization: `Bearer ${forged}` }]) {
      const res = await t.http.post(`/v1/tasks/${taskId}/leases`).set(headers).send({ resource: "records" });
      expect(res.status).to.equal(401);
      expect(res.body.error.code).to.equal("unauthenticated");
    }
    // An operator is a verified principal but never receives credentials.
    const asOperator = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(operatorHeaders(t))
      .send({ resource: "records" })
      .expect(403);
    expect(asOperator.body.error.code).to.equal("forbidden");
    expect(t.recording.issueCalls).to.equal(0);
  });

  it("refuses scopes the task was not approved for and TTLs above the maximum with policy_denied", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { resources: [{ resource: "records", scopes: ["read"] }] });
    const scope = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .send({ resource: "records", scopes: ["write"] })
      .expect(403);
    expect(scope.body.error.code).to.equal("policy_denied");
    const ttl = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .send({ resource: "records", ttlSeconds: 601 })
      .expect(403);
    expect(ttl.body.error.code).to.equal("policy_denied");
    const other = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .send({ resource: "demo-api" })
      .expect(403);
    expect(other.body.error.code).to.equal("policy_denied");
    expect(t.recording.issueCalls).to.equal(0);

    // The largest allowed TTL still mints, and the lease is capped at it.
    const { lease } = await mintLease(t, agent, taskId, { ttlSeconds: 600 });
    expect(Date.parse(lease.expiresAt) - Date.parse(lease.issuedAt)).to.be.at.most(600_000);
    expect(lease.scopes).to.deep.equal(["read"]);
  });

  it("evaluates policy at mint time: a rule removed after approval denies the next mint", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const later = await startTestBroker({
      name: "inv-policy-now",
      prefix: t.prefix,
      issuer: t.issuer,
      workers: false,
      config: (raw) => {
        raw.policies = (raw.policies as { name: string }[]).filter((rule) => rule.name !== "agents-approval");
      },
    });
    try {
      const res = await later.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(agent.headers)
        .send({ resource: "records" })
        .expect(403);
      expect(res.body.error.code).to.equal("policy_denied");
      expect(res.body.error.reason).to.be.a("string").and.not.equal("");
      expect(later.recording.issueCalls).to.equal(0);
    } finally {
      await later.close({ keepKeys: true });
    }
    // The broker that still has the rule mints for the same task.
    const { lease } = await mintLease(t, agent, taskId);
    expect(lease.status).to.equal("active");
  });
});

describe("invariant: the lease and its revoke job exist before the adapter issues", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "inv-order" });
  });
  after(async () => {
    await t.close();
  });

  it("writes the lease as issuing and puts it in the due index before issue, scheduling no job per lease", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    let seen: { lease?: Lease; dueAt?: string | null; jobs?: number } | undefined;
    t.recording.onIssue = async (request) => {
      seen = {
        lease: await t.broker.leaseStore.get(request.leaseId),
        dueAt: await t.redis.zscore(t.broker.keys.forId(request.leaseId).liveLeases, request.leaseId),
        jobs: (await t.broker.queue.queue.getDelayed()).filter((job) => job.name === "settle-leases").length,
      };
    };
    try {
      const { lease, credential } = await mintLease(t, agent, taskId, { ttlSeconds: 120 });
      expect(seen?.lease?.id).to.equal(lease.id);
      expect(seen?.lease?.status).to.equal("issuing");
      // While issuing, it is due when the mint would be stale: a crash from here on is found then.
      const staleAt = Date.parse(lease.issuedAt) + t.config.revocation.staleSeconds * 1000;
      expect(Number(seen?.dueAt)).to.equal(Math.min(staleAt, Date.parse(lease.expiresAt)));
      expect(seen?.jobs).to.equal(0);
      // Once active, it is due at its expiry.
      const shard = t.broker.keys.forId(lease.id);
      expect(Number(await t.redis.zscore(shard.liveLeases, lease.id))).to.equal(Date.parse(lease.expiresAt));
      // What the adapter created carries the lease id.
      expect(await t.recording.liveArtifacts()).to.include(lease.id);
      expect(credential.username).to.equal(`u-${lease.id}`);
      expect((await t.broker.leaseStore.get(lease.id))?.handle).to.equal(`artifact/${lease.id}`);
      expect(await t.redis.hget(shard.handles("records"), `artifact/${lease.id}`)).to.equal(lease.id);
    } finally {
      t.recording.onIssue = undefined;
    }
  });

  it("removes what the adapter created when it fails after creating, and never activates the lease", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const statuses: string[] = [];
    t.recording.onIssue = async (request) => {
      statuses.push((await t.broker.leaseStore.get(request.leaseId))?.status ?? "missing");
    };
    t.recording.failIssue = "after-create";
    let res: Awaited<ReturnType<typeof t.http.post>>;
    try {
      res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(agent.headers)
        .send({ resource: "records" })
        .expect(502);
    } finally {
      t.recording.failIssue = undefined;
      t.recording.onIssue = undefined;
    }
    expect(res.body.error.code).to.equal("adapter_unavailable");
    expect(statuses).to.deep.equal(["issuing"]);
    const list = await t.http.get(`/v1/leases?taskId=${taskId}`).set(operatorHeaders(t)).expect(200);
    expect(list.body.leases).to.have.length(1);
    const leaseId = list.body.leases[0].id as string;
    const lease = await leaseReaches(t, leaseId, "revoked");
    expect(lease.revokeReason).to.equal("issue_failed");
    expect(await t.recording.liveArtifacts()).to.not.include(leaseId);
    const types = (await auditEvents(t, { leaseId })).map((e) => e.type);
    expect(types).to.include.members(["lease_issue_failed", "lease_revoked"]);
    expect(types).to.not.include("lease_issued");
  });
});

describe("invariant: revocation is idempotent and retried; failures are marked, counted and audited", () => {
  let t: TestBroker;
  let clock: ManualClock;
  beforeEach(async () => {
    clock = new ManualClock();
    t = await startTestBroker({ name: "inv-revoke", clock });
  });
  afterEach(async () => {
    await t.close();
  });

  it("retries transient adapter failures until the lease is revoked", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    t.recording.revokeFailures = 2;
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    // Retries are scheduled on the broker's clock, with backoff: it moves on while we wait.
    const revoked = await leaseReaches(t, lease.id, "revoked", 8000, clock);
    expect(revoked.revokeReason).to.equal("released");
    expect(t.recording.revokeCalls).to.equal(3);
    expect(await t.recording.liveArtifacts()).to.not.include(lease.id);
    expect(
      await metricValue(
        t,
        "jitkey_revoke_failures_total",
        'jitkey_revoke_failures_total{resource="records"}',
      ),
    ).to.equal(0);
  });

  it("treats revoking an already revoked lease as a harmless success", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    await leaseReaches(t, lease.id, "revoked");
    const again = await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    expect(again.body.lease.status).to.equal("revoked");
    expect(again.body.lease.revokeReason).to.equal("released");
    const forced = await t.http
      .post("/v1/revocations")
      .set(operatorHeaders(t))
      .send({ leaseId: lease.id, reason: "belt and braces" })
      .expect(202);
    expect(forced.body.revocation.matched).to.equal(0);
    // Give a stray job time to run: nothing more reaches the adapter.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(t.recording.revokeCalls).to.equal(1);
    expect((await t.broker.leaseStore.get(lease.id))?.status).to.equal("revoked");
    const revokedEvents = (await auditEvents(t, { leaseId: lease.id })).filter(
      (e) => e.type === "lease_revoked",
    );
    expect(revokedEvents).to.have.length(1);
  });

  it("marks a lease revoke_failed after the last attempt, counts it, audits it and lists it", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    t.recording.revokeFailures = 10;
    await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
    // Retries are scheduled on the broker's clock: it moves on past each backoff while we wait.
    const failed = await leaseReaches(t, lease.id, "revoke_failed", 8000, clock);
    expect(t.recording.revokeCalls).to.equal(3);
    expect(failed.lastError).to.be.a("string");
    expect(await t.recording.liveArtifacts()).to.include(lease.id);
    expect(
      await metricValue(
        t,
        "jitkey_revoke_failures_total",
        'jitkey_revoke_failures_total{resource="records"}',
      ),
    ).to.equal(1);
    const metrics = await t.http.get("/metrics").expect(200);
    expect(metrics.text).to.match(/^jitkey_revoke_failures_total\{resource="records"\} 1$/m);
    const event = eventOf(await auditEvents(t, { leaseId: lease.id }), "lease_revoke_failed");
    expect(event.resource).to.equal("records");
    const listed = await t.http.get("/v1/leases?status=revoke_failed").set(operatorHeaders(t)).expect(200);
    expect(listed.body.leases.map((l: Lease) => l.id)).to.deep.equal([lease.id]);
  });

  it("does not retry a permanent failure, and revokes it once the adapter heals", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    t.recording.revokePermanent = true;
    await t.http.delete(`/v1/leases/${lease.id}`).set(operatorHeaders(t)).expect(202);
    await leaseReaches(t, lease.id, "revoke_failed");
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(t.recording.revokeCalls).to.equal(1);

    // Too early for a retry: it stays failed.
    expect((await t.broker.sweeper.sweepOnce()).leases).to.equal(0);
    t.recording.revokePermanent = false;
    clock.advance((t.config.revocation.retryFailedAfterSeconds + 1) * 1000);
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked.revokeReason).to.equal("operator");
    // The retry is the operator's revocation still: the record and the audit keep who asked.
    expect(revoked.revokeRequestedBy).to.equal("operator:alice");
    expect(eventOf(await auditEvents(t, { leaseId: lease.id }), "lease_revoked").actor).to.equal(
      "operator:alice",
    );
    expect(t.recording.revokeCalls).to.equal(2);
    expect(await t.recording.liveArtifacts()).to.not.include(lease.id);
    const listed = await t.http.get("/v1/leases?status=revoke_failed").set(operatorHeaders(t)).expect(200);
    expect(listed.body.leases).to.deep.equal([]);
  });
});

describe("invariant: secrets never reach Redis, logs, audit or errors", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "inv-secrets" });
  });
  after(async () => {
    await t.close();
  });

  it("keeps every issued secret and JWT signature out of Redis, logs and the audit trail", async () => {
    const agent = await agentSession(t);
    const auto = await agentSession(t, "repo:acme/app:ref:refs/heads/main");
    const rs = { Authorization: `Bearer ${t.introspectorToken}` };

    const completedTask = await createTask(t, agent);
    const releasedTask = await createTask(t, agent);
    const jwtTask = await createTask(t, auto, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const minted = [
      await mintLease(t, agent, completedTask),
      await mintLease(t, agent, completedTask, { scopes: ["read"] }),
      await mintLease(t, agent, releasedTask),
    ];
    const jwt = await mintLease(t, auto, jwtTask, { resource: "demo-api" });
    const token = jwt.credential.token as string;
    const signature = token.split(".")[2] as string;
    await t.http.post("/v1/introspect").set(rs).type("form").send({ token }).expect(200);
    // A credential presented where an identity is expected is rejected without echoing it.
    const misuse = await t.http
      .post("/v1/tasks")
      .set({ Authorization: `Bearer ${token}` })
      .send({ goal: "x", resources: [{ resource: "records", scopes: ["read"] }] })
      .expect(401);
    expect(JSON.stringify(misuse.body)).to.not.include(signature);

    t.recording.failIssue = "after-create";
    const failed = await t.http
      .post(`/v1/tasks/${releasedTask}/leases`)
      .set(agent.headers)
      .send({ resource: "records" })
      .expect(502);
    t.recording.failIssue = undefined;
    await t.http.post(`/v1/tasks/${completedTask}/complete`).set(agent.headers).expect(200);
    await t.http.delete(`/v1/leases/${minted[2]?.lease.id}`).set(agent.headers).expect(202);
    await t.http.post(`/v1/tasks/${jwtTask}/complete`).set(auto.headers).expect(200);

    await eventually(async () => (await t.recording.liveArtifacts()).length === 0, 8000);
    await eventually(async () => (await leasesInDueIndexes(t)) === 0, 8000);

    const secrets = [...t.recording.secrets, signature];
    expect(t.recording.secrets).to.have.length(4);
    for (const { credential } of minted) expect(t.recording.secrets).to.include(credential.password);
    const dump = await dumpPrefix(t.redis, t.prefix);
    const logs = t.logs.text();
    const audit = JSON.stringify(await auditEvents(t));
    expect(audit).to.include("lease_issued");
    for (const secret of secrets) {
      expect(dump, "redis").to.not.include(secret);
      expect(logs, "logs").to.not.include(secret);
      expect(audit, "audit").to.not.include(secret);
      expect(JSON.stringify(failed.body), "error").to.not.include(secret);
    }
  });

  it("redacts secrets handed to the logger by mistake", () => {
    const logs = new CapturedLogs();
    const logger = createLogger({ sink: logs });
    const password = "hunter2-very-secret";
    const bearer = "opaque-bearer-value-123";
    const jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXBhcnQ";
    logger.info("oops", {
      password,
      authorization: `Bearer ${bearer}`,
      nested: { clientSecret: password, note: `token was ${jwt}` },
      header: `Bearer ${bearer}`,
      leaseId: "lse_visible",
    });
    const text = logs.text();
    expect(text).to.include("lse_visible");
    expect(text).to.include("[redacted]");
    for (const secret of [password, bearer, jwt, "c2lnbmF0dXJlLXBhcnQ"]) expect(text).to.not.include(secret);
  });
});

describe("invariant: every decision lands in the audit trail with its reason", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "inv-audit" });
  });
  after(async () => {
    await t.close();
  });

  it("records task creation, rejection, operator and policy approval, and denial", async () => {
    const agent = await agentSession(t, "agent-auditee");
    const auto = await agentSession(t, "repo:acme/audited");
    const op = operatorHeaders(t);

    const rejected = await t.http
      .post("/v1/tasks")
      .set(auto.headers)
      .send({ goal: "write things", resources: [{ resource: "demo-api", scopes: ["write"] }] })
      .expect(403);
    expect(rejected.body.error.code).to.equal("policy_denied");
    const rejection = eventOf(await auditEvents(t, { agentId: auto.agentId }), "task_rejected");
    expect(rejection).to.include({ decision: "deny", actor: `agent:${auto.agentId}` });
    expect(rejection.reason).to.be.a("string").and.include("write");

    const approvedTask = await createTask(t, agent, { approve: false });
    await t.http.post(`/v1/tasks/${approvedTask}/approve`).set(op).send({ note: "fine for Q3" }).expect(200);
    const approvedEvents = await auditEvents(t, { taskId: approvedTask });
    expect(eventOf(approvedEvents, "task_created")).to.include({ decision: "allow", status: "pending" });
    expect(eventOf(approvedEvents, "task_approved")).to.include({
      actor: "operator:alice",
      decision: "allow",
      reason: "fine for Q3",
    });

    const deniedTask = await createTask(t, agent, { approve: false });
    await t.http.post(`/v1/tasks/${deniedTask}/deny`).set(op).send({ note: "not this quarter" }).expect(200);
    expect(eventOf(await auditEvents(t, { taskId: deniedTask }), "task_denied")).to.include({
      actor: "operator:alice",
      decision: "deny",
      reason: "not this quarter",
    });

    const autoTask = await createTask(t, auto, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const autoApproval = eventOf(await auditEvents(t, { taskId: autoTask }), "task_approved");
    expect(autoApproval).to.include({ actor: "policy:ci-read-auto", decision: "allow" });
    expect(autoApproval.reason).to.be.a("string").and.not.equal("");
  });

  it("records lease issue, denial, revocation and operator revocation requests with reasons", async () => {
    const agent = await agentSession(t, "agent-leaser");
    const op = operatorHeaders(t);
    const taskId = await createTask(t, agent, { resources: [{ resource: "records", scopes: ["read"] }] });

    await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .send({ resource: "records", scopes: ["write"] })
      .expect(403);
    const { lease: released } = await mintLease(t, agent, taskId);
    const { lease: forced } = await mintLease(t, agent, taskId);
    await t.http.delete(`/v1/leases/${released.id}`).set(agent.headers).expect(202);
    await t.http
      .post("/v1/revocations")
      .set(op)
      .send({ leaseId: forced.id, reason: "suspicious activity" })
      .expect(202);
    await leaseReaches(t, released.id, "revoked");
    await leaseReaches(t, forced.id, "revoked");

    const events = await auditEvents(t, { taskId });
    const denial = eventOf(events, "lease_denied");
    expect(denial).to.include({ decision: "deny", resource: "records", actor: `agent:${agent.agentId}` });
    expect(denial.reason).to.be.a("string").and.include("write");

    const issued = events.filter((e) => e.type === "lease_issued");
    expect(issued.map((e) => e.leaseId)).to.have.members([released.id, forced.id]);
    for (const event of issued) {
      expect(event.decision).to.equal("allow");
      expect(event.reason).to.include("agents-approval");
    }

    const revoked = events.filter((e) => e.type === "lease_revoked");
    expect(revoked.find((e) => e.leaseId === released.id)).to.include({
      reason: "released",
      actor: `agent:${agent.agentId}`,
    });
    expect(revoked.find((e) => e.leaseId === forced.id)).to.include({
      reason: "operator",
      actor: "operator:alice",
    });

    const requested = eventOf(await auditEvents(t, { leaseId: forced.id }), "revocation_requested");
    expect(requested).to.include({ actor: "operator:alice", reason: "suspicious activity", matched: 1 });
  });
});

describe("invariant: a broker-signed token's lease is written once, after signing, or not at all", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "inv-local" });
  });
  after(async () => {
    await t.close();
  });

  it("writes the lease already active, indexed and due at its expiry, with its lease_issued event", async () => {
    const agent = await agentSession(t, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(t, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const { lease } = await mintLease(t, agent, taskId, { resource: "demo-api" });
    expect(lease.status).to.equal("active");
    const shard = t.broker.keys.forId(lease.id);
    expect(Number(await t.redis.zscore(shard.liveLeases, lease.id))).to.equal(Date.parse(lease.expiresAt));
    expect(await t.redis.zscore(shard.taskLeases(taskId), lease.id)).to.not.equal(null);
    expect(eventOf(await auditEvents(t, { leaseId: lease.id }), "lease_issued").decision).to.equal("allow");
  });

  it("gives out no credential and writes no lease when the task ended after it was read", async () => {
    const agent = await agentSession(t, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(t, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    await mintLease(t, agent, taskId, { resource: "demo-api" });
    // Ended behind the minter's back: its memory of the approved task is now stale.
    await t.broker.tasks.close(taskId, "completed", "system");
    const res = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .send({ resource: "demo-api" })
      .expect(409);
    expect(res.body.error.code).to.equal("task_closed");
    expect(res.body).to.not.have.property("credential");
    expect(await t.redis.zcard(t.broker.keys.forId(taskId).taskLeases(taskId))).to.equal(1);
  });
});
