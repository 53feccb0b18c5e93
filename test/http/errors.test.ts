import { expect } from "chai";
import { generateKeyPair, SignJWT } from "jose";
import type { Response } from "supertest";
import { CreateTaskBody } from "../../broker/http/schemas.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { eventually } from "../helpers/redis.ts";

/** Every bearer token a test in this file presented; no error body may echo one back. */
const presented = new Set<string>();

function bearer(token: string): { Authorization: string } {
  presented.add(token);
  return { Authorization: `Bearer ${token}` };
}

/** Asserts the error contract: status, `error.code`, and no presented token in the body. */
function expectError(res: Response, status: number, code: string): Record<string, unknown> {
  expect(res.status, JSON.stringify(res.body)).to.equal(status);
  expect(res.body.error?.code).to.equal(code);
  expect(res.body.error.message).to.be.a("string");
  const text = res.text;
  for (const token of presented) expect(text).to.not.include(token);
  return res.body.error;
}

const readDemo = { goal: "read the demo api", resources: [{ resource: "demo-api", scopes: ["read"] }] };
const readRecords = { goal: "read some records", resources: [{ resource: "records", scopes: ["read"] }] };

describe("HTTP errors: every code in the contract, through real requests", () => {
  let t: TestBroker;
  let op: { Authorization: string };
  let ciAgent: { Authorization: string };
  let approvalAgent: { Authorization: string };

  before(async () => {
    t = await startTestBroker({ name: "errors" });
    op = bearer(t.operatorToken);
    ciAgent = bearer(await t.agentToken("repo:acme/app:ref:refs/heads/main"));
    approvalAgent = bearer(await t.agentToken("agent-errors"));
  });
  after(async () => {
    await t.close();
  });

  /** A task of `approvalAgent` on `records`, pending, or approved by the operator. */
  async function recordsTask(approve: boolean): Promise<string> {
    const created = await t.http.post("/v1/tasks").set(approvalAgent).send(readRecords).expect(201);
    const id = created.body.task.id as string;
    if (approve) await t.http.post(`/v1/tasks/${id}/approve`).set(op).send({}).expect(200);
    return id;
  }

  describe("invalid_request", () => {
    it("answers 400 to a body that is not valid JSON", async () => {
      const res = await t.http
        .post("/v1/tasks")
        .set(ciAgent)
        .set("Content-Type", "application/json")
        .send('{"goal": "x", ');
      expectError(res, 400, "invalid_request");
    });

    it("answers 400 with issues naming the missing goal", async () => {
      const res = await t.http.post("/v1/tasks").set(ciAgent).send({ resources: readDemo.resources });
      const error = expectError(res, 400, "invalid_request");
      const issues = error.issues as { path: string }[];
      expect(issues.map((issue) => issue.path)).to.include("goal");
    });

    it("answers 400 with issues to an unknown field", async () => {
      const res = await t.http
        .post("/v1/tasks")
        .set(ciAgent)
        .send({ ...readDemo, sudo: true });
      const error = expectError(res, 400, "invalid_request");
      expect(error.issues).to.deep.include({
        path: "",
        message: `holds a field it does not take; it takes ${Object.keys(CreateTaskBody.shape).join(", ")}`,
      });
    });

    it("never repeats an unknown field's name: a JSON body sent as a form is one field named by the whole body", async () => {
      const secret = "rec-secret-0123456789abcdef";
      const res = await t.http
        .post("/v1/tasks")
        .set(ciAgent)
        .set("Content-Type", "application/x-www-form-urlencoded")
        .send(JSON.stringify({ token: secret, [`${secret}-key`]: 1 }));
      expectError(res, 400, "invalid_request");
      expect(res.text).to.not.include(secret);
      expect(res.text).to.include("holds a field it does not take");
    });

    it("names the fields a nested object takes when it holds ones it does not", async () => {
      const [resource] = readDemo.resources;
      const res = await t.http
        .post("/v1/tasks")
        .set(ciAgent)
        .send({ ...readDemo, resources: [{ ...resource, colour: "blue", size: 3 }] });
      const error = expectError(res, 400, "invalid_request");
      const issue = (error.issues as { path: string; message: string }[]).find(
        (i) => i.path === "resources.0",
      );
      expect(issue?.message).to.match(/^holds 2 fields it does not take; it takes resource, scopes$/);
      expect(error.message).to.not.include("colour");
    });

    it("answers 400 with issues naming ttlSeconds 0", async () => {
      const res = await t.http
        .post("/v1/tasks")
        .set(ciAgent)
        .send({ ...readDemo, ttlSeconds: 0 });
      const error = expectError(res, 400, "invalid_request");
      expect((error.issues as { path: string }[]).map((issue) => issue.path)).to.include("ttlSeconds");
    });

    it("answers 400 with issues to a query limit that is not a number", async () => {
      const res = await t.http.get("/v1/tasks?limit=abc").set(op);
      const error = expectError(res, 400, "invalid_request");
      expect((error.issues as { path: string }[]).map((issue) => issue.path)).to.include("limit");
    });

    it("answers 400 to an unknown query parameter on an operator list", async () => {
      const res = await t.http.get("/v1/leases?colour=blue").set(op);
      const error = expectError(res, 400, "invalid_request");
      expect(error.message).to.match(/^\(query\): holds a field it does not take; it takes /);
    });

    it("answers 413 to a body over the size limit", async () => {
      const res = await t.http
        .post("/v1/tasks")
        .set(ciAgent)
        .send({ ...readDemo, goal: "x".repeat(100_000) });
      expectError(res, 413, "invalid_request");
    });
  });

  describe("unauthenticated", () => {
    it("answers 401 with a WWW-Authenticate challenge when there is no Authorization header", async () => {
      const res = await t.http.get("/v1/tasks");
      expectError(res, 401, "unauthenticated");
      expect(res.headers["www-authenticate"]).to.match(/^Bearer /);
    });

    it("answers 401 to a garbage bearer token without echoing it", async () => {
      const res = await t.http.get("/v1/tasks").set(bearer("not-a-token-at-all-Zq9"));
      expectError(res, 401, "unauthenticated");
      expect(res.headers["www-authenticate"]).to.match(/^Bearer /);
    });

    it("answers 401 to a non-bearer Authorization scheme", async () => {
      presented.add(t.operatorToken);
      const res = await t.http.get("/v1/tasks").set("Authorization", `Basic ${t.operatorToken}`);
      expectError(res, 401, "unauthenticated");
    });

    it("answers 401 to an expired identity token", async () => {
      const expired = await t.issuer.token("agent-errors", { iatOffsetSeconds: -600, expiresInSeconds: 60 });
      const res = await t.http.post("/v1/tasks").set(bearer(expired)).send(readDemo);
      expectError(res, 401, "unauthenticated");
      expect(res.headers["www-authenticate"]).to.match(/^Bearer /);
    });

    it("answers 401 to a token forged with another key under the trusted issuer and kid", async () => {
      const { privateKey } = await generateKeyPair("ES256");
      const now = Math.floor(Date.now() / 1000);
      const forged = await new SignJWT({})
        .setProtectedHeader({ alg: "ES256", kid: t.issuer.publicJwk.kid as string })
        .setIssuer(t.issuer.issuer)
        .setAudience("jitkey")
        .setSubject("agent-errors")
        .setIssuedAt(now)
        .setExpirationTime(now + 300)
        .sign(privateKey);
      const res = await t.http.post("/v1/tasks").set(bearer(forged)).send(readDemo);
      expectError(res, 401, "unauthenticated");
    });
  });

  describe("forbidden", () => {
    it("refuses an agent token on an operator route", async () => {
      expectError(await t.http.get("/v1/tasks").set(ciAgent), 403, "forbidden");
      expectError(await t.http.get("/v1/audit").set(ciAgent), 403, "forbidden");
      expectError(
        await t.http.post("/v1/revocations").set(ciAgent).send({ all: true, reason: "x" }),
        403,
        "forbidden",
      );
    });

    it("refuses an operator token on agent routes", async () => {
      expectError(await t.http.post("/v1/tasks").set(op).send(readDemo), 403, "forbidden");
      const taskId = await recordsTask(true);
      expectError(
        await t.http.post(`/v1/tasks/${taskId}/leases`).set(op).send({ resource: "records" }),
        403,
        "forbidden",
      );
    });

    it("refuses an introspector token on operator routes", async () => {
      const rs = bearer(t.introspectorToken);
      expectError(await t.http.get("/v1/audit").set(rs), 403, "forbidden");
      expectError(await t.http.get("/v1/leases").set(rs), 403, "forbidden");
      expectError(await t.http.post("/v1/tasks/tsk_x/approve").set(rs).send({}), 403, "forbidden");
    });

    it("answers 401, as RFC 7662 §2.1 asks, when an agent calls introspection", async () => {
      const agent = bearer(await t.agentToken("agent-curious"));
      expectError(
        await t.http.post("/v1/introspect").set(agent).send({ token: "x.y.z" }),
        401,
        "unauthenticated",
      );
    });

    it("refuses another agent reading, completing or minting on someone else's task and lease", async () => {
      const taskId = await recordsTask(true);
      const minted = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(approvalAgent)
        .send({ resource: "records" })
        .expect(201);
      const leaseId = minted.body.lease.id as string;
      const intruder = bearer(await t.agentToken("agent-intruder"));
      expectError(await t.http.get(`/v1/tasks/${taskId}`).set(intruder), 403, "forbidden");
      expectError(await t.http.get(`/v1/leases/${leaseId}`).set(intruder), 403, "forbidden");
      expectError(await t.http.delete(`/v1/leases/${leaseId}`).set(intruder), 403, "forbidden");
      expectError(await t.http.post(`/v1/tasks/${taskId}/complete`).set(intruder), 403, "forbidden");
      expectError(
        await t.http.post(`/v1/tasks/${taskId}/leases`).set(intruder).send({ resource: "records" }),
        403,
        "forbidden",
      );
      // The lease is untouched by the intruder's attempts.
      const lease = await t.http.get(`/v1/leases/${leaseId}`).set(approvalAgent).expect(200);
      expect(lease.body.lease.status).to.equal("active");
      // Every attempt is on the intruder's own audit trail.
      const audit = await t.http
        .get("/v1/audit?agentId=ci:agent-intruder")
        .set(bearer(t.operatorToken))
        .expect(200);
      const attempts = audit.body.events.map(
        (e: { type: string; decision: string }) => `${e.type}:${e.decision}`,
      );
      expect(attempts).to.include.members(["access_denied:deny", "lease_denied:deny"]);
      expect(attempts.filter((a: string) => a === "access_denied:deny")).to.have.length(4);
    });
  });

  describe("policy_denied", () => {
    it("denies a scope the matching rule does not allow, with a reason", async () => {
      const res = await t.http
        .post("/v1/tasks")
        .set(ciAgent)
        .send({ goal: "write", resources: [{ resource: "demo-api", scopes: ["write"] }] });
      const error = expectError(res, 403, "policy_denied");
      expect(error.reason).to.be.a("string").and.include("write");
    });

    it("denies a resource no rule names for the agent", async () => {
      const res = await t.http.post("/v1/tasks").set(ciAgent).send(readRecords);
      const error = expectError(res, 403, "policy_denied");
      expect(error.reason).to.be.a("string").and.include("records");
    });

    it("denies a data classification above the rule's maximum", async () => {
      const res = await t.http
        .post("/v1/tasks")
        .set(approvalAgent)
        .send({ ...readRecords, dataClassification: "restricted" });
      const error = expectError(res, 403, "policy_denied");
      expect(error.reason).to.be.a("string").and.include("restricted");
    });

    it("denies a lease TTL over the rule's and resource's maximum", async () => {
      const taskId = await recordsTask(true);
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(approvalAgent)
        .send({ resource: "records", ttlSeconds: 601 });
      const error = expectError(res, 403, "policy_denied");
      expect(error.reason).to.be.a("string").and.include("601");
      const leases = await t.http.get(`/v1/leases?taskId=${taskId}`).set(op).expect(200);
      expect(leases.body.leases).to.deep.equal([]);
    });

    it("denies an unknown resource", async () => {
      const res = await t.http
        .post("/v1/tasks")
        .set(ciAgent)
        .send({ goal: "x", resources: [{ resource: "no-such-api", scopes: ["read"] }] });
      const error = expectError(res, 403, "policy_denied");
      expect(error.reason).to.be.a("string").and.include("no-such-api");
    });
  });

  describe("not_found", () => {
    it("answers 404 for an unknown task, lease and route", async () => {
      expectError(await t.http.get("/v1/tasks/tsk_doesnotexist").set(op), 404, "not_found");
      expectError(await t.http.post("/v1/tasks/tsk_doesnotexist/approve").set(op).send({}), 404, "not_found");
      expectError(
        await t.http.post("/v1/tasks/tsk_doesnotexist/leases").set(ciAgent).send({ resource: "demo-api" }),
        404,
        "not_found",
      );
      expectError(await t.http.get("/v1/leases/lse_doesnotexist").set(op), 404, "not_found");
      expectError(await t.http.delete("/v1/leases/lse_doesnotexist").set(op), 404, "not_found");
      expectError(await t.http.get("/v1/nothing-here"), 404, "not_found");
      expectError(await t.http.put("/v1/tasks").set(op), 404, "not_found");
    });
  });

  describe("task_not_approved and task_closed", () => {
    it("answers 409 task_not_approved when minting for a pending task", async () => {
      const taskId = await recordsTask(false);
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(approvalAgent)
        .send({ resource: "records" });
      expectError(res, 409, "task_not_approved");
    });

    it("answers 409 task_closed when minting for a completed task", async () => {
      const taskId = await recordsTask(true);
      await t.http.post(`/v1/tasks/${taskId}/complete`).set(approvalAgent).expect(200);
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(approvalAgent)
        .send({ resource: "records" });
      expectError(res, 409, "task_closed");
      expectError(await t.http.post(`/v1/tasks/${taskId}/complete`).set(approvalAgent), 409, "task_closed");
    });

    it("answers 409 task_closed when minting for a denied task", async () => {
      const taskId = await recordsTask(false);
      await t.http.post(`/v1/tasks/${taskId}/deny`).set(op).send({ note: "no" }).expect(200);
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(approvalAgent)
        .send({ resource: "records" });
      expectError(res, 409, "task_closed");
    });

    it("answers 409 task_closed when approving or denying a task that is not pending", async () => {
      const approved = await recordsTask(true);
      expectError(await t.http.post(`/v1/tasks/${approved}/approve`).set(op).send({}), 409, "task_closed");
      expectError(await t.http.post(`/v1/tasks/${approved}/deny`).set(op).send({}), 409, "task_closed");
      const denied = await recordsTask(false);
      await t.http.post(`/v1/tasks/${denied}/deny`).set(op).send({}).expect(200);
      expectError(await t.http.post(`/v1/tasks/${denied}/approve`).set(op).send({}), 409, "task_closed");
      const task = await t.http.get(`/v1/tasks/${denied}`).set(op).expect(200);
      expect(task.body.task.status).to.equal("denied");
    });
  });

  describe("adapter_unavailable", () => {
    afterEach(() => {
      t.recording.failIssue = undefined;
    });

    it("answers 502 when the adapter fails to issue and leaves no active lease behind", async () => {
      const taskId = await recordsTask(true);
      t.recording.failIssue = "before-create";
      const res = await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(approvalAgent)
        .send({ resource: "records" });
      expectError(res, 502, "adapter_unavailable");
      expect(res.body).to.not.have.property("credential");

      const listed = await t.http.get(`/v1/leases?taskId=${taskId}`).set(op).expect(200);
      expect(listed.body.leases).to.have.length(1);
      expect(listed.body.leases[0].status).to.not.equal("active");
      const leaseId = listed.body.leases[0].id as string;
      const revoked = await eventually(async () => {
        const lease = await t.http.get(`/v1/leases/${leaseId}`).set(op).expect(200);
        return lease.body.lease.status === "revoked" ? lease.body.lease : undefined;
      });
      expect(revoked.revokeReason).to.equal("issue_failed");
      const active = await t.http.get(`/v1/leases?taskId=${taskId}&status=active`).set(op).expect(200);
      expect(active.body.leases).to.deep.equal([]);
    });
  });
});

describe("HTTP errors: rate_limited", () => {
  let t: TestBroker | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  /** Sends until a 429 (at most 2·limit+1 requests, so a minute boundary cannot hide it). */
  async function untilLimited(limit: number, send: () => Promise<Response>): Promise<Response[]> {
    const answers: Response[] = [];
    for (let i = 0; i < 2 * limit + 1; i++) {
      const res = await send();
      answers.push(res);
      if (res.status === 429) break;
    }
    return answers;
  }

  it("answers 429 with Retry-After once an agent passes its requests per minute", async () => {
    t = await startTestBroker({
      name: "errors-ratelimit",
      workers: false,
      config: (raw) => {
        raw.limits = { agentRequestsPerMinute: 3 };
      },
    });
    const broker = t;
    const agent = bearer(await broker.agentToken("agent-busy"));
    const answers = await untilLimited(3, () => broker.http.get("/v1/tasks/tsk_unknown").set(agent));
    expect(answers.slice(0, 3).map((res) => res.status)).to.deep.equal([404, 404, 404]);
    const limited = answers.at(-1) as Response;
    expectError(limited, 429, "rate_limited");
    const retryAfter = Number(limited.headers["retry-after"]);
    // A sliding window: the wait may reach into the next minute.
    expect(retryAfter).to.be.within(1, 120);
    // Another agent has its own budget.
    const other = bearer(await broker.agentToken("agent-calm"));
    expectError(await broker.http.get("/v1/tasks/tsk_unknown").set(other), 404, "not_found");
  });

  it("answers 429 with Retry-After after repeated bad tokens from one address", async () => {
    t = await startTestBroker({
      name: "errors-authlimit",
      workers: false,
      config: (raw) => {
        raw.limits = { failedAuthPerMinute: 3 };
      },
    });
    const broker = t;
    const answers = await untilLimited(3, () =>
      broker.http.get("/v1/tasks").set(bearer("wrong-operator-token-123")),
    );
    expect(answers.slice(0, 3).map((res) => res.status)).to.deep.equal([401, 401, 401]);
    const limited = answers.at(-1) as Response;
    expectError(limited, 429, "rate_limited");
    expect(Number(limited.headers["retry-after"])).to.be.within(1, 120);
    // Failures never lock out a token that matches: the real operator and introspector still get in.
    await broker.http.get("/v1/tasks").set(bearer(broker.operatorToken)).expect(200);
    await broker.http
      .post("/v1/introspect")
      .set(bearer(broker.introspectorToken))
      .type("form")
      .send({ token: "x.y.z" })
      .expect(200);
    // A signed identity token cannot be guessed, so a real agent behind the same address still gets in.
    await broker.http
      .post("/v1/tasks")
      .set(bearer(await broker.agentToken()))
      .send({ goal: "still works", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);
    // Unknown opaque tokens are denials too, and land in the audit trail.
    const audit = { body: { events: await broker.broker.audit.query({ limit: 1000 }) } };
    const rejected = audit.body.events.filter((e: { type: string }) => e.type === "identity_rejected");
    expect(rejected.length).to.be.at.least(3);
    expect(rejected[0]).to.include({
      decision: "deny",
      reason: "unknown bearer token",
      route: "GET /v1/tasks",
    });
  });

  it("does not let a client dodge the failed-auth limit by rotating X-Forwarded-For", async () => {
    t = await startTestBroker({
      name: "errors-xff",
      workers: false,
      config: (raw) => {
        raw.limits = { failedAuthPerMinute: 2 };
      },
    });
    const broker = t;
    const statuses: number[] = [];
    for (const forwarded of ["203.0.113.1", "203.0.113.2", "203.0.113.3"]) {
      const res = await broker.http
        .get("/v1/tasks")
        .set(bearer("guess-123"))
        .set("X-Forwarded-For", forwarded);
      statuses.push(res.status);
    }
    expect(statuses).to.deep.equal([401, 401, 429]);
  });
});

describe("HTTP errors: internal", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "errors-internal", workers: false });
  });
  after(async () => {
    await t.close();
  });

  it("answers 500 internal with a request id and no detail when something unexpected fails", async () => {
    const query = t.broker.audit.query;
    t.broker.audit.query = async () => {
      throw new Error("boom at audit-log.ts:12 with a stack");
    };
    try {
      const res = await t.http.get("/v1/audit").set(bearer(t.operatorToken));
      expectError(res, 500, "internal");
      expect(res.body.error.requestId).to.be.a("string").and.equal(res.headers["x-request-id"]);
      expect(Object.keys(res.body.error).sort()).to.deep.equal(["code", "message", "requestId"]);
      expect(res.text).to.not.match(/stack|boom|\.ts:\d+/i);
      // The detail goes to the log, under the same request id.
      expect(t.logs.text()).to.include(res.body.error.requestId);
    } finally {
      t.broker.audit.query = query;
    }
  });

  it("logs one request line per request with the path the client asked for, on mounted routers too", async () => {
    const res = await t.http.get("/v1/tasks?limit=1").set(bearer(t.operatorToken)).expect(200);
    const requestId = res.headers["x-request-id"];
    const line = await eventually(async () => {
      const found = t.logs.lines.find(
        (l) => l.includes(`"requestId":"${requestId}"`) && l.includes('"message":"request"'),
      );
      return found ? (JSON.parse(found) as { ms: unknown }) : undefined;
    });
    expect(line).to.include({ method: "GET", path: "/v1/tasks", status: 200 });
    expect(line.ms).to.be.a("number");
  });

  it("answers 503 unavailable with Retry-After and no detail when Redis is gone", async () => {
    t.broker.redis.disconnect();
    const res = await t.http.get("/v1/tasks").set(bearer(t.operatorToken));
    expectError(res, 503, "unavailable");
    expect(res.headers["retry-after"]).to.equal("1");
    expect(res.body.error.requestId).to.be.a("string").and.equal(res.headers["x-request-id"]);
    expect(res.text).to.not.match(/stack|ioredis|econn|\.ts:\d+/i);
  });
});
