import { expect } from "chai";
import { AUDIT_EVENT_TYPES } from "../../broker/audit/audit-log.ts";
import { sha256Hex } from "../../broker/operators/principal-tokens.ts";
import { CATEGORY_OF } from "../../broker/tasks/task-timeline.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import {
  type AgentSession,
  agentSession,
  auditEvents,
  createTask,
  leaseReaches,
  mintLease,
  operatorHeaders,
} from "../helpers/flows.ts";

const call = { type: "tool_call", tool: "github", action: "create_issue", target: "acme/app", outcome: "ok" };

describe("tool-call log and task timeline", () => {
  let t: TestBroker;
  let agent: AgentSession;
  const toolServerToken = `rs-tools-${Date.now()}`;
  const recordsServerToken = `rs-records-${Date.now()}`;
  const toolServer = { Authorization: `Bearer ${toolServerToken}` };
  const recordsServer = { Authorization: `Bearer ${recordsServerToken}` };

  before(async () => {
    t = await startTestBroker({
      name: "tool-calls",
      config: (raw) => {
        raw.limits = { agentRequestsPerMinute: 200 };
        (raw.introspectors as Record<string, unknown>[]).push(
          { name: "demo-tools", tokenSha256: sha256Hex(toolServerToken), resources: ["demo-api"] },
          { name: "records-tools", tokenSha256: sha256Hex(recordsServerToken), resources: ["records"] },
        );
      },
    });
    agent = await agentSession(t);
  });
  after(async () => {
    await t.close();
  });

  const record = (taskId: string, headers: { Authorization: string }, body: Record<string, unknown>) =>
    t.http.post(`/v1/tasks/${taskId}/events`).set(headers).send(body);
  const timeline = (
    taskId: string,
    headers: { Authorization: string },
    query: Record<string, unknown> = {},
  ) => t.http.get(`/v1/tasks/${taskId}/timeline`).query(query).set(headers);

  describe("POST /v1/tasks/:id/events", () => {
    it("records the owner agent's tool call with its lease, as a tool_call audit event of the task", async () => {
      const taskId = await createTask(t, agent);
      const { lease } = await mintLease(t, agent, taskId);
      const res = await record(taskId, agent.headers, {
        ...call,
        leaseId: lease.id,
        detail: "issue #42",
      }).expect(201);
      expect(res.body.event).to.include({
        type: "tool_call",
        actor: `agent:${agent.agentId}`,
        agentId: agent.agentId,
        taskId,
        leaseId: lease.id,
        resource: "records",
        source: "agent",
        tool: "github",
        action: "create_issue",
        target: "acme/app",
        outcome: "ok",
        detail: "issue #42",
        leaseStatus: "active",
      });
      const stored = (await auditEvents(t, { taskId })).find((e) => e.type === "tool_call");
      expect(stored?.id).to.equal(res.body.event.id);
      expect((await auditEvents(t, { agentId: agent.agentId })).map((e) => e.id)).to.include(
        res.body.event.id,
      );
    });

    it("refuses other agents, operators, and tasks that are not approved", async () => {
      const taskId = await createTask(t, agent);
      const other = await agentSession(t, "agent-other");
      expect((await record(taskId, other.headers, call).expect(403)).body.error.code).to.equal("forbidden");
      expect((await record(taskId, operatorHeaders(t), call).expect(403)).body.error.code).to.equal(
        "forbidden",
      );
      expect((await record(taskId, { Authorization: "" }, call).expect(401)).body.error.code).to.equal(
        "unauthenticated",
      );
      const pending = await createTask(t, agent, { approve: false });
      expect((await record(pending, agent.headers, call).expect(409)).body.error.code).to.equal(
        "task_not_approved",
      );
      await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
      expect((await record(taskId, agent.headers, call).expect(409)).body.error.code).to.equal("task_closed");
      expect(
        (await record("tsk_AAAAAAAAAAAAAAAAAAAAAA", agent.headers, call).expect(404)).body.error.code,
      ).to.equal("not_found");
    });

    it("refuses a lease of another task, and fields that are missing, unknown, too long or hold control characters", async () => {
      const taskId = await createTask(t, agent);
      const otherTask = await createTask(t, agent);
      const { lease } = await mintLease(t, agent, otherTask);
      const foreign = await record(taskId, agent.headers, { ...call, leaseId: lease.id }).expect(422);
      expect(foreign.body.error.code).to.equal("invalid_request");
      for (const body of [
        { type: "tool_call", tool: "github" },
        { ...call, type: "note" },
        { ...call, extra: 1 },
        { ...call, tool: "x".repeat(129) },
        { ...call, detail: "line one\nline two" },
        { ...call, target: "acme/\u202Eppa" },
        { ...call, outcome: "maybe" },
        { ...call, leaseId: "not-a-lease" },
      ]) {
        const res = await record(taskId, agent.headers, body);
        expect(res.status, JSON.stringify(body)).to.equal(400);
        expect(res.body.error.code).to.equal("invalid_request");
      }
      expect((await auditEvents(t, { taskId })).filter((e) => e.type === "tool_call")).to.deep.equal([]);
    });

    it("lets a tool server record a call about a lease of one of its resources, and no other", async () => {
      const taskId = await createTask(t, agent);
      const { lease } = await mintLease(t, agent, taskId);
      const res = await record(taskId, recordsServer, { ...call, leaseId: lease.id }).expect(201);
      expect(res.body.event).to.include({ actor: "introspector:records-tools", source: "tool_server" });
      // Without a lease, or about another resource's lease, it has no standing.
      expect((await record(taskId, recordsServer, call).expect(403)).body.error.code).to.equal("forbidden");
      expect(
        (await record(taskId, toolServer, { ...call, leaseId: lease.id }).expect(403)).body.error.code,
      ).to.equal("forbidden");
      const denied = (await auditEvents(t, { taskId })).filter((e) => e.type === "access_denied");
      expect(denied.map((e) => e.actor)).to.deep.equal([
        "introspector:records-tools",
        "introspector:demo-tools",
      ]);
    });

    it("records a call made with a lease since revoked, showing the lease's status", async () => {
      const taskId = await createTask(t, agent);
      const { lease } = await mintLease(t, agent, taskId);
      await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
      await leaseReaches(t, lease.id, "revoked");
      const res = await record(taskId, agent.headers, { ...call, leaseId: lease.id }).expect(201);
      expect(res.body.event.leaseStatus).to.equal("revoked");
    });
  });

  describe("GET /v1/tasks/:id/timeline", () => {
    it("merges identity, approval, policy decision, lease, tool call and revocation events in order, labelled", async () => {
      const taskId = await createTask(t, agent);
      await t.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(agent.headers)
        .send({ resource: "records", ttlSeconds: 99_999 })
        .expect(403);
      const { lease } = await mintLease(t, agent, taskId);
      await record(taskId, agent.headers, { ...call, leaseId: lease.id }).expect(201);
      await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
      await leaseReaches(t, lease.id, "revoked");

      const res = await timeline(taskId, agent.headers).expect(200);
      const steps = res.body.events.map((e: { type: string; category: string }) => `${e.category}:${e.type}`);
      expect(steps).to.deep.equal([
        "identity:task_created",
        "approval:task_approved",
        "policy:lease_denied",
        "lease:lease_issued",
        "tool_call:tool_call",
        "revocation:task_completed",
        "revocation:lease_revoke_requested",
        "revocation:lease_revoked",
      ]);
      expect(res.body.events[0]).to.include({ issuer: "ci", agentOwner: "platform-team" });
      const ids = res.body.events.map((e: { id: string }) => e.id);
      expect(
        (await timeline(taskId, operatorHeaders(t)).expect(200)).body.events.map((e: { id: string }) => e.id),
      ).to.deep.equal(ids);
    });

    it("pages with after and limit, like /v1/audit", async () => {
      const taskId = await createTask(t, agent);
      for (let i = 0; i < 5; i++)
        await record(taskId, agent.headers, { ...call, detail: `call ${i}` }).expect(201);
      const all = (await timeline(taskId, agent.headers).expect(200)).body.events as { id: string }[];
      const first = (await timeline(taskId, agent.headers, { limit: 3 }).expect(200)).body.events as {
        id: string;
      }[];
      const rest = (
        await timeline(taskId, agent.headers, { after: first.at(-1)?.id, limit: 100 }).expect(200)
      ).body.events as { id: string }[];
      expect([...first, ...rest].map((e) => e.id)).to.deep.equal(all.map((e) => e.id));
      expect(first).to.have.length(3);
      expect((await timeline(taskId, agent.headers, { after: "soon" }).expect(400)).body.error.code).to.equal(
        "invalid_request",
      );
      expect((await timeline(taskId, agent.headers, { limit: 0 }).expect(400)).body.error.code).to.equal(
        "invalid_request",
      );
    });

    it("is for the owner agent and operators only", async () => {
      const taskId = await createTask(t, agent);
      const other = await agentSession(t, "agent-other");
      expect((await timeline(taskId, other.headers).expect(403)).body.error.code).to.equal("forbidden");
      expect((await timeline(taskId, toolServer).expect(403)).body.error.code).to.equal("forbidden");
      expect((await timeline(taskId, { Authorization: "" }).expect(401)).body.error.code).to.equal(
        "unauthenticated",
      );
      expect(
        (await timeline("tsk_AAAAAAAAAAAAAAAAAAAAAA", agent.headers).expect(404)).body.error.code,
      ).to.equal("not_found");
    });

    it("labels every audit event type explicitly", () => {
      expect(AUDIT_EVENT_TYPES.filter((type) => !CATEGORY_OF[type])).to.deep.equal([]);
    });
  });

  describe("limits", () => {
    it("counts tool calls against the agent's request limit, and a tool server's against the same budget", async () => {
      const limited = await startTestBroker({
        name: "tool-calls-limit",
        config: (raw) => {
          raw.limits = { agentRequestsPerMinute: 4 };
          (raw.introspectors as Record<string, unknown>[]).push({
            name: "records-tools",
            tokenSha256: sha256Hex(recordsServerToken),
            resources: ["records"],
          });
        },
      });
      try {
        const busy = await agentSession(limited, "agent-busy");
        const taskId = await createTask(limited, busy, { approve: false });
        await limited.http
          .post(`/v1/tasks/${taskId}/approve`)
          .set(operatorHeaders(limited))
          .send({})
          .expect(200);
        const { lease } = await mintLease(limited, busy, taskId);
        // create, mint: two of four used.
        await limited.http.post(`/v1/tasks/${taskId}/events`).set(busy.headers).send(call).expect(201);
        await limited.http.post(`/v1/tasks/${taskId}/events`).set(busy.headers).send(call).expect(201);
        const over = await limited.http
          .post(`/v1/tasks/${taskId}/events`)
          .set(busy.headers)
          .send(call)
          .expect(429);
        expect(over.body.error.code).to.equal("rate_limited");
        expect(Number(over.headers["retry-after"])).to.be.at.least(1);

        const server = { Authorization: `Bearer ${recordsServerToken}` };
        const body = { ...call, leaseId: lease.id };
        for (let i = 0; i < 4; i++)
          await limited.http.post(`/v1/tasks/${taskId}/events`).set(server).send(body).expect(201);
        const serverOver = await limited.http
          .post(`/v1/tasks/${taskId}/events`)
          .set(server)
          .send(body)
          .expect(429);
        expect(serverOver.body.error.code).to.equal("rate_limited");
      } finally {
        await limited.close();
      }
    });
  });
});
