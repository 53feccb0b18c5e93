import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { join } from "node:path";
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { expect } from "chai";
import type { Response } from "supertest";
import { buildOpenApi } from "../../broker/http/openapi.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { CONTRACT_ERROR_CODES } from "../helpers/contract.ts";
import { ROOT } from "../helpers/process.ts";
import { eventually } from "../helpers/redis.ts";
import { bobHeaders, withApprovalFixtures } from "../tasks/setup.ts";

type OpenApi = {
  paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, unknown> }> }>>;
};

/**
 * Validates real answers against the `/openapi.json` a broker serves: every status a route
 * answers must be documented for it, and every JSON body must match its schema, so a field
 * added to an answer without the schema (or the other way round) fails here.
 */
class ContractChecker {
  readonly ajv = new Ajv2020({ strict: false, allErrors: true });
  /** `METHOD path status` of every answer checked, to prove every route was exercised. */
  readonly seen = new Set<string>();

  constructor(readonly doc: OpenApi) {
    addFormats.default(this.ajv);
    this.ajv.addSchema(doc, "openapi");
  }

  check(res: Response, method: string, path: string): Response {
    const operation = this.doc.paths[path]?.[method];
    expect(operation, `${method} ${path} is not in the document`).to.exist;
    const documented = operation?.responses[String(res.status)];
    expect(documented, `${method} ${path} answered ${res.status}, which the document does not list`).to.exist;
    const type = String(res.headers["content-type"] ?? "").split(";")[0] ?? "";
    const content = documented?.content ?? {};
    expect(Object.keys(content), `${method} ${path} ${res.status}: content types`).to.include(
      Object.keys(content).find((documentedType) => documentedType.startsWith(type)) ?? type,
    );
    if (type === "application/json") {
      const pointer = [
        "paths",
        path,
        method,
        "responses",
        String(res.status),
        "content",
        "application/json",
        "schema",
      ]
        .map((part) => part.replaceAll("~", "~0").replaceAll("/", "~1"))
        .join("/");
      const validate = this.ajv.getSchema(`openapi#/${pointer}`);
      expect(validate, pointer).to.exist;
      const valid = validate?.(res.body);
      expect(valid, `${method} ${path} ${res.status}: ${this.ajv.errorsText(validate?.errors)}\n${res.text}`)
        .to.be.true;
    }
    this.seen.add(`${method} ${path} ${res.status}`);
    return res;
  }
}

describe("contract: real answers of every route match the served OpenAPI document", () => {
  let t: TestBroker;
  let contract: ContractChecker;
  let op: { Authorization: string };
  let agent: { Authorization: string };

  before(async () => {
    t = await startTestBroker({
      name: "contract",
      config: (raw) => {
        raw.devMode = true;
        withApprovalFixtures(raw);
      },
      dev: { operatorToken: "unused", issueAgentToken: (subject) => t.agentToken(`agent-${subject}`) },
    });
    contract = new ContractChecker((await t.http.get("/openapi.json").expect(200)).body);
    op = { Authorization: `Bearer ${t.operatorToken}` };
    agent = { Authorization: `Bearer ${await t.agentToken("agent-contract")}` };
  });
  after(async () => {
    await t.close();
  });

  const records = { goal: "read records", resources: [{ resource: "records", scopes: ["read"] }] };

  async function approvedTask(): Promise<string> {
    const created = await t.http.post("/v1/tasks").set(agent).send(records).expect(201);
    await t.http.post(`/v1/tasks/${created.body.task.id}/approve`).set(op).send({}).expect(200);
    return created.body.task.id as string;
  }

  it("task routes: create, list, read, approve, deny, complete — and their errors", async () => {
    const c = contract;
    const created = c.check(await t.http.post("/v1/tasks").set(agent).send(records), "post", "/v1/tasks");
    expect(created.status).to.equal(201);
    const id = created.body.task.id as string;
    c.check(await t.http.post("/v1/tasks").set(agent).send({ goal: "" }), "post", "/v1/tasks");
    c.check(await t.http.post("/v1/tasks").send(records), "post", "/v1/tasks");
    c.check(await t.http.post("/v1/tasks").set(op).send(records), "post", "/v1/tasks");
    c.check(
      await t.http
        .post("/v1/tasks")
        .set(agent)
        .send({ goal: "write", resources: [{ resource: "records", scopes: ["admin"] }] }),
      "post",
      "/v1/tasks",
    );
    c.check(
      await t.http.post("/v1/tasks").set(agent).set("Content-Type", "text/plain").send("goal"),
      "post",
      "/v1/tasks",
    );
    c.check(
      await t.http
        .post("/v1/tasks")
        .set(agent)
        .send({ ...records, goal: "x".repeat(70_000) }),
      "post",
      "/v1/tasks",
    );

    c.check(await t.http.get("/v1/tasks?status=pending").set(op), "get", "/v1/tasks");
    c.check(await t.http.get("/v1/tasks?status=nope").set(op), "get", "/v1/tasks");
    c.check(await t.http.get(`/v1/tasks/${id}`).set(agent), "get", "/v1/tasks/{id}");
    c.check(await t.http.get("/v1/tasks/tsk_missing").set(op), "get", "/v1/tasks/{id}");

    const denied = await t.http.post("/v1/tasks").set(agent).send(records).expect(201);
    c.check(
      await t.http.post(`/v1/tasks/${denied.body.task.id}/deny`).set(op).send({ note: "no" }),
      "post",
      "/v1/tasks/{id}/deny",
    );
    c.check(
      await t.http.post(`/v1/tasks/${denied.body.task.id}/deny`).set(op).send({}),
      "post",
      "/v1/tasks/{id}/deny",
    );
    c.check(await t.http.get(`/v1/tasks/${denied.body.task.id}`).set(op), "get", "/v1/tasks/{id}");
    c.check(
      await t.http.post(`/v1/tasks/${id}/approve`).set(op).send({ note: "fine" }),
      "post",
      "/v1/tasks/{id}/approve",
    );
    c.check(await t.http.post(`/v1/tasks/${id}/approve`).set(op).send({}), "post", "/v1/tasks/{id}/approve");
    c.check(await t.http.post(`/v1/tasks/${id}/complete`).set(agent), "post", "/v1/tasks/{id}/complete");
    c.check(await t.http.post(`/v1/tasks/${id}/complete`).set(agent), "post", "/v1/tasks/{id}/complete");
    c.check(await t.http.get(`/v1/tasks/${id}`).set(op), "get", "/v1/tasks/{id}");
  });

  it("approval depth, tool calls and the timeline — and their errors", async () => {
    const c = contract;
    const twoResources = {
      goal: "read records and the demo api",
      resources: [
        { resource: "records", scopes: ["read", "write"] },
        { resource: "demo-api", scopes: ["read"] },
      ],
    };
    const narrowed = await t.http.post("/v1/tasks").set(agent).send(twoResources).expect(201);
    const narrowedId = narrowed.body.task.id as string;
    c.check(
      await t.http
        .post(`/v1/tasks/${narrowedId}/approve`)
        .set(op)
        .send({ resources: [{ resource: "records", scopes: ["write"] }], ttlSeconds: 5 }),
      "post",
      "/v1/tasks/{id}/approve",
    );
    const widened = await t.http.post("/v1/tasks").set(agent).send(records).expect(201);
    const widen = c.check(
      await t.http
        .post(`/v1/tasks/${widened.body.task.id}/approve`)
        .set(op)
        .send({ resources: [{ resource: "records", scopes: ["admin"] }] }),
      "post",
      "/v1/tasks/{id}/approve",
    );
    expect(widen.status).to.equal(422);
    c.check(
      await t.http.post(`/v1/tasks/${widened.body.task.id}/approve`).set(op).send({ ttlSeconds: "soon" }),
      "post",
      "/v1/tasks/{id}/approve",
    );
    c.check(
      await t.http.post(`/v1/tasks/${widened.body.task.id}/approve`).set(agent).send({}),
      "post",
      "/v1/tasks/{id}/approve",
    );

    const restricted = await t.http
      .post("/v1/tasks")
      .set(agent)
      .send({ goal: "read payroll", resources: [{ resource: "payroll", scopes: ["read"] }] })
      .expect(201);
    const restrictedId = restricted.body.task.id as string;
    const first = c.check(
      await t.http.post(`/v1/tasks/${restrictedId}/approve`).set(op).send({ note: "one of two" }),
      "post",
      "/v1/tasks/{id}/approve",
    );
    expect(first.body.task.status).to.equal("pending");
    const duplicate = c.check(
      await t.http.post(`/v1/tasks/${restrictedId}/approve`).set(op).send({}),
      "post",
      "/v1/tasks/{id}/approve",
    );
    expect(duplicate.body.error.code).to.equal("duplicate_approval");
    const second = c.check(
      await t.http.post(`/v1/tasks/${restrictedId}/approve`).set(bobHeaders()).send({}),
      "post",
      "/v1/tasks/{id}/approve",
    );
    expect(second.body.task.approvals).to.have.length(2);

    const taskId = await approvedTask();
    const minted = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent)
      .send({ resource: "records" })
      .expect(201);
    const call = { type: "tool_call", tool: "github", action: "create_issue", outcome: "ok" };
    const recorded = c.check(
      await t.http
        .post(`/v1/tasks/${taskId}/events`)
        .set(agent)
        .send({ ...call, leaseId: minted.body.lease.id, target: "acme/app", detail: "issue 42" }),
      "post",
      "/v1/tasks/{id}/events",
    );
    expect(recorded.status).to.equal(201);
    c.check(
      await t.http
        .post(`/v1/tasks/${taskId}/events`)
        .set(agent)
        .send({ ...call, tool: "" }),
      "post",
      "/v1/tasks/{id}/events",
    );
    c.check(await t.http.post(`/v1/tasks/${taskId}/events`).send(call), "post", "/v1/tasks/{id}/events");
    c.check(
      await t.http.post(`/v1/tasks/${taskId}/events`).set(op).send(call),
      "post",
      "/v1/tasks/{id}/events",
    );
    c.check(
      await t.http.post("/v1/tasks/tsk_missing/events").set(agent).send(call),
      "post",
      "/v1/tasks/{id}/events",
    );
    c.check(
      await t.http
        .post(`/v1/tasks/${restrictedId}/events`)
        .set(agent)
        .send({ ...call, leaseId: minted.body.lease.id }),
      "post",
      "/v1/tasks/{id}/events",
    );
    const pending = await t.http.post("/v1/tasks").set(agent).send(records).expect(201);
    c.check(
      await t.http.post(`/v1/tasks/${pending.body.task.id}/events`).set(agent).send(call),
      "post",
      "/v1/tasks/{id}/events",
    );

    const timeline = c.check(
      await t.http.get(`/v1/tasks/${taskId}/timeline`).set(agent),
      "get",
      "/v1/tasks/{id}/timeline",
    );
    expect(timeline.body.events.map((e: { category: string }) => e.category)).to.include("tool_call");
    c.check(
      await t.http.get(`/v1/tasks/${taskId}/timeline?after=${timeline.body.events[0].id}&limit=2`).set(op),
      "get",
      "/v1/tasks/{id}/timeline",
    );
    c.check(
      await t.http.get(`/v1/tasks/${taskId}/timeline?after=x`).set(op),
      "get",
      "/v1/tasks/{id}/timeline",
    );
    c.check(
      await t.http
        .get(`/v1/tasks/${taskId}/timeline`)
        .set({ Authorization: `Bearer ${t.introspectorToken}` }),
      "get",
      "/v1/tasks/{id}/timeline",
    );
    c.check(await t.http.get("/v1/tasks/tsk_missing/timeline").set(op), "get", "/v1/tasks/{id}/timeline");
  });

  it("lease routes: mint, list, read, release, force revocation — and their errors", async () => {
    const c = contract;
    const pending = await t.http.post("/v1/tasks").set(agent).send(records).expect(201);
    c.check(
      await t.http.post(`/v1/tasks/${pending.body.task.id}/leases`).set(agent).send({ resource: "records" }),
      "post",
      "/v1/tasks/{id}/leases",
    );
    const taskId = await approvedTask();
    const minted = c.check(
      await t.http.post(`/v1/tasks/${taskId}/leases`).set(agent).send({ resource: "records" }),
      "post",
      "/v1/tasks/{id}/leases",
    );
    expect(minted.status).to.equal(201);
    const leaseId = minted.body.lease.id as string;
    c.check(
      await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(agent)
        .send({ resource: "records", ttlSeconds: 99_999 }),
      "post",
      "/v1/tasks/{id}/leases",
    );
    c.check(
      await t.http.post("/v1/tasks/tsk_missing/leases").set(agent).send({ resource: "records" }),
      "post",
      "/v1/tasks/{id}/leases",
    );
    t.recording.failIssue = "before-create";
    try {
      c.check(
        await t.http.post(`/v1/tasks/${taskId}/leases`).set(agent).send({ resource: "records" }),
        "post",
        "/v1/tasks/{id}/leases",
      );
    } finally {
      t.recording.failIssue = undefined;
    }

    c.check(await t.http.get(`/v1/leases?taskId=${taskId}`).set(op), "get", "/v1/leases");
    c.check(await t.http.get("/v1/leases?taskId=not-a-task-id").set(op), "get", "/v1/leases");
    c.check(await t.http.get(`/v1/leases/${leaseId}`).set(agent), "get", "/v1/leases/{id}");
    c.check(await t.http.get("/v1/leases/lse_missing").set(agent), "get", "/v1/leases/{id}");
    c.check(await t.http.delete(`/v1/leases/${leaseId}`).set(agent), "delete", "/v1/leases/{id}");
    // A released lease shows who asked for its revocation and when.
    const released = await eventually(async () => {
      const res = await t.http.get(`/v1/leases/${leaseId}`).set(op);
      return res.body.lease?.status === "revoked" ? res : undefined;
    });
    expect(c.check(released, "get", "/v1/leases/{id}").body.lease).to.include.keys(
      "revokeRequestedAt",
      "revokeRequestedBy",
      "revokedAt",
    );
    c.check(await t.http.get("/v1/leases?status=revoked").set(op), "get", "/v1/leases");

    c.check(
      await t.http.post("/v1/revocations").set(op).send({ taskId, reason: "contract test" }),
      "post",
      "/v1/revocations",
    );
    c.check(await t.http.post("/v1/revocations").set(op).send({ all: true }), "post", "/v1/revocations");
    c.check(
      await t.http.post("/v1/revocations").set(agent).send({ all: true, reason: "x" }),
      "post",
      "/v1/revocations",
    );
  });

  it("introspection: active with every field, inactive, and refused", async () => {
    const c = contract;
    const jwtTask = await t.http
      .post("/v1/tasks")
      .set(agent)
      .send({ goal: "read demo", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);
    await t.http.post(`/v1/tasks/${jwtTask.body.task.id}/approve`).set(op).send({}).expect(200);
    const jwt = await t.http
      .post(`/v1/tasks/${jwtTask.body.task.id}/leases`)
      .set(agent)
      .send({ resource: "demo-api" })
      .expect(201);
    const rs = { Authorization: `Bearer ${t.introspectorToken}` };
    const active = c.check(
      await t.http.post("/v1/introspect").set(rs).type("form").send({ token: jwt.body.credential.token }),
      "post",
      "/v1/introspect",
    );
    expect(active.body).to.include({ active: true, resource: "demo-api" });
    expect(active.body).to.include.keys("client_id", "nbf", "task_id", "jti");
    c.check(await t.http.post("/v1/introspect").set(rs).send({ token: "x.y.z" }), "post", "/v1/introspect");
    c.check(await t.http.post("/v1/introspect").send({ token: "x.y.z" }), "post", "/v1/introspect");
    c.check(await t.http.post("/v1/introspect").set(rs).send({}), "post", "/v1/introspect");
  });

  it("token exchange, OAuth metadata and protected resource metadata — and their errors", async () => {
    const c = contract;
    const task = await t.http
      .post("/v1/tasks")
      .set(agent)
      .send({ goal: "delegate", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);
    await t.http.post(`/v1/tasks/${task.body.task.id}/approve`).set(op).send({}).expect(200);
    const minted = await t.http
      .post(`/v1/tasks/${task.body.task.id}/leases`)
      .set(agent)
      .send({ resource: "demo-api" })
      .expect(201);
    const form = {
      grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
      subject_token: minted.body.credential.token,
      subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
    };
    const exchanged = c.check(
      await t.http.post("/v1/token").set(agent).type("form").send(form),
      "post",
      "/v1/token",
    );
    expect(exchanged.status).to.equal(200);
    c.check(
      await t.http
        .post("/v1/token")
        .set(agent)
        .type("form")
        .send({ ...form, grant_type: "password" }),
      "post",
      "/v1/token",
    );
    c.check(await t.http.post("/v1/token").type("form").send(form), "post", "/v1/token");
    c.check(
      await t.http.get("/.well-known/oauth-authorization-server"),
      "get",
      "/.well-known/oauth-authorization-server",
    );
    c.check(await t.http.get("/v1/protected-resources/demo-api"), "get", "/v1/protected-resources/{name}");
    c.check(await t.http.get("/v1/protected-resources/nope"), "get", "/v1/protected-resources/{name}");
  });

  it("audit, dev and system routes", async () => {
    const c = contract;
    const audit = c.check(await t.http.get("/v1/audit?limit=5").set(op), "get", "/v1/audit");
    const last = audit.body.events.at(-1).id as string;
    c.check(await t.http.get(`/v1/audit?after=${last}`).set(op), "get", "/v1/audit");
    c.check(await t.http.get("/v1/audit?after=notanid").set(op), "get", "/v1/audit");
    c.check(await t.http.get("/v1/audit").set(agent), "get", "/v1/audit");
    c.check(
      await t.http.post("/v1/dev/agent-token").set(op).send({ agent: "contract" }),
      "post",
      "/v1/dev/agent-token",
    );
    c.check(
      await t.http.post("/v1/dev/agent-token").set(op).send({ agent: "" }),
      "post",
      "/v1/dev/agent-token",
    );
    c.check(await t.http.get("/.well-known/jwks.json"), "get", "/.well-known/jwks.json");
    c.check(await t.http.get("/healthz"), "get", "/healthz");
    c.check(await t.http.get("/readyz"), "get", "/readyz");
    c.check(await t.http.get("/metrics"), "get", "/metrics");
    c.check(await t.http.get("/openapi.json"), "get", "/openapi.json");
  });

  it("renewal, waiting reads, events, and the audit chain's verify and export", async () => {
    const c = contract;
    const taskId = await approvedTask();
    const minted = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent)
      .send({ resource: "records" })
      .expect(201);
    const leaseId = minted.body.lease.id as string;
    t.recording.renewable = true;
    try {
      const renewed = c.check(
        await t.http.post(`/v1/leases/${leaseId}/renew`).set(agent).send({ ttlSeconds: 120 }),
        "post",
        "/v1/leases/{id}/renew",
      );
      expect(renewed.status).to.equal(200);
      c.check(
        await t.http.post(`/v1/leases/${leaseId}/renew`).set(agent).send({ ttlSeconds: 0 }),
        "post",
        "/v1/leases/{id}/renew",
      );
      c.check(
        await t.http.post(`/v1/leases/${leaseId}/renew`).set(op).send({}),
        "post",
        "/v1/leases/{id}/renew",
      );
    } finally {
      t.recording.renewable = false;
    }
    c.check(
      await t.http.post(`/v1/leases/${leaseId}/renew`).set(agent).send({}),
      "post",
      "/v1/leases/{id}/renew",
    );
    c.check(await t.http.get(`/v1/tasks/${taskId}?waitSeconds=1`).set(agent), "get", "/v1/tasks/{id}");
    c.check(await t.http.get(`/v1/tasks/${taskId}?waitSeconds=99`).set(agent), "get", "/v1/tasks/{id}");

    c.check(await t.http.get("/v1/events").set(agent), "get", "/v1/events");
    c.check(await t.http.get("/v1/events?types=nope").set(op), "get", "/v1/events");
    // A stream never ends: check its status and type, then hang up.
    const server = createServer(t.app).listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    try {
      const abort = new AbortController();
      const address = server.address() as { port: number };
      const stream = await fetch(`http://127.0.0.1:${address.port}/v1/events`, {
        headers: op,
        signal: abort.signal,
      });
      const documented =
        contract.doc.paths["/v1/events"]?.get?.responses[String(stream.status)]?.content ?? {};
      expect(Object.keys(documented)).to.include((stream.headers.get("content-type") ?? "").split(";")[0]);
      contract.seen.add(`get /v1/events ${stream.status}`);
      abort.abort();
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }

    await t.broker.sealer.sealAll();
    const verified = c.check(await t.http.get("/v1/audit/verify").set(op), "get", "/v1/audit/verify");
    expect(verified.body.ok).to.equal(true);
    c.check(await t.http.get("/v1/audit/verify").set(agent), "get", "/v1/audit/verify");
    const exported = c.check(
      await t.http
        .get("/v1/audit/export")
        .set(op)
        .buffer(true)
        .parse((r, done) => {
          let text = "";
          r.on("data", (chunk: Buffer) => {
            text += chunk;
          });
          r.on("end", () => done(null, text));
        }),
      "get",
      "/v1/audit/export",
    );
    expect(String(exported.body).split("\n")[0]).to.include("jitkey-audit-export");
    c.check(await t.http.get("/v1/audit/export").set(agent), "get", "/v1/audit/export");
  });

  it("rate_limited and unavailable answers match the error schema too", async () => {
    const limited = await startTestBroker({
      name: "contract-limits",
      workers: false,
      config: (raw) => {
        raw.limits = { agentRequestsPerMinute: 3 };
        raw.quotas = { pendingTasksPerAgent: 1 };
      },
    });
    try {
      const busy = { Authorization: `Bearer ${await limited.agentToken("agent-busy")}` };
      await limited.http.post("/v1/tasks").set(busy).send(records).expect(201);
      const quota = contract.check(
        await limited.http.post("/v1/tasks").set(busy).send(records),
        "post",
        "/v1/tasks",
      );
      expect(quota.status).to.equal(429);
      expect(quota.body.error.quota).to.equal("pendingTasksPerAgent");
      await limited.http.get("/v1/tasks/tsk_missing").set(busy).expect(404);
      const res = contract.check(
        await limited.http.get("/v1/tasks/tsk_missing").set(busy),
        "get",
        "/v1/tasks/{id}",
      );
      expect(res.status).to.equal(429);
      contract.check(await limited.http.get("/readyz"), "get", "/readyz");
      limited.broker.redis.disconnect();
      const down = contract.check(
        await limited.http.post("/v1/tasks").set(busy).send(records),
        "post",
        "/v1/tasks",
      );
      expect(down.status).to.equal(503);
      expect(contract.check(await limited.http.get("/readyz"), "get", "/readyz").status).to.equal(503);
    } finally {
      await limited.close();
    }
  });

  it("exercised every route of the document", () => {
    const routes = Object.entries(contract.doc.paths).flatMap(([path, methods]) =>
      Object.keys(methods).map((method) => `${method} ${path}`),
    );
    const exercised = new Set([...contract.seen].map((entry) => entry.split(" ").slice(0, 2).join(" ")));
    expect(routes.filter((route) => !exercised.has(route))).to.deep.equal([]);
  });
});

describe("contract: docs/api.md documents exactly the routes of the OpenAPI document", () => {
  it("has a section for every route, and no route the broker does not serve", async () => {
    const doc = buildOpenApi("http://jitkey.test", { devMode: true }) as OpenApi;
    const served = Object.entries(doc.paths)
      .flatMap(([path, methods]) => Object.keys(methods).map((method) => `${method.toUpperCase()} ${path}`))
      .sort();
    const markdown = await readFile(join(ROOT, "docs", "api.md"), "utf8");
    const documented = [...markdown.matchAll(/^### `(GET|POST|DELETE|PUT|PATCH) ([^`\s]+)`/gm)]
      .map((match) => `${match[1]} ${match[2]?.replaceAll(/:(\w+)/g, "{$1}")}`)
      .sort();
    expect(documented).to.deep.equal(served);
  });

  it("lists every error code the broker answers with", async () => {
    const markdown = await readFile(join(ROOT, "docs", "api.md"), "utf8");
    for (const code of [...CONTRACT_ERROR_CODES, "internal"]) {
      expect(markdown, code).to.include(`\`${code}\``);
    }
  });
});
