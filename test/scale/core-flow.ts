import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect } from "chai";
import type { ManualClock } from "../../broker/clock.ts";
import type { Lease } from "../../broker/leases/lease.ts";
import type { TestBroker } from "../helpers/broker.ts";
import {
  type AgentSession,
  agentSession,
  auditEvents,
  createTask,
  leaseReaches,
  mintLease,
  operatorHeaders,
} from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";

/** `GET /v1/events` read as it arrives: every event name with its task id. */
class LiveStream {
  readonly seen: { name: string; taskId: unknown }[] = [];
  readonly #abort = new AbortController();

  static async open(base: string, headers: Record<string, string>): Promise<LiveStream> {
    const stream = new LiveStream();
    const res = await fetch(`${base}/v1/events`, { headers, signal: stream.#abort.signal });
    expect(res.status).to.equal(200);
    void stream.read(res.body as ReadableStream<Uint8Array>);
    return stream;
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let text = "";
    try {
      for await (const chunk of body) {
        text += decoder.decode(chunk, { stream: true });
        const frames = text.split("\n\n");
        text = frames.pop() ?? "";
        for (const frame of frames) {
          const name = /^event: (.*)$/m.exec(frame)?.[1];
          const data = /^data: (.*)$/m.exec(frame)?.[1];
          if (name && data) this.seen.push({ name, taskId: JSON.parse(data).taskId });
        }
      }
    } catch {
      // Aborted by close().
    }
  }

  namesFor(taskId: string): string[] {
    return this.seen.filter((e) => e.taskId === taskId).map((e) => e.name);
  }

  close(): void {
    this.#abort.abort();
  }
}

/** Listens on a loopback port (for the streaming routes) and returns the base URL and a closer. */
export async function listen(t: TestBroker): Promise<{ base: string; close(): Promise<void> }> {
  const server: Server = createServer(t.app).listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

const introspect = async (t: TestBroker, token: string): Promise<boolean> =>
  (await t.http.post("/v1/introspect").set(operatorHeaders(t)).type("form").send({ token }).expect(200)).body
    .active;

/** What {@link runCoreFlow} made, for checks of where it landed. */
export interface CoreFlowResult {
  agent: AgentSession;
  taskIds: string[];
  leases: Lease[];
}

/**
 * The broker's main path over HTTP, for `tasks` tasks of one agent (so several shards): a task
 * waits for approval (long-poll answered by pub/sub), the operator approves, the agent mints a
 * broker-signed JWT and a Redis-recorded credential, introspection says active; completion
 * revokes every lease, introspection says inactive, the audit trail answers by task, agent and
 * lease, the hash chain verifies, and the event stream saw it all.
 */
export async function runCoreFlow(t: TestBroker, base: string, tasks = 6): Promise<CoreFlowResult> {
  const agent = await agentSession(t, `agent-scale-${Math.random().toString(36).slice(2, 8)}`);
  const stream = await LiveStream.open(base, operatorHeaders(t));
  try {
    const taskIds: string[] = [];
    const leases: Lease[] = [];
    const tokens: string[] = [];
    for (let i = 0; i < tasks; i++) {
      const taskId = await createTask(t, agent, {
        approve: false,
        resources: [
          { resource: "demo-api", scopes: ["read"] },
          { resource: "records", scopes: ["read", "write"] },
        ],
      });
      taskIds.push(taskId);
      const pending = await t.http.get("/v1/tasks?status=pending").set(operatorHeaders(t)).expect(200);
      expect(pending.body.tasks.map((task: { id: string }) => task.id)).to.include(taskId);
      // The agent waits for the decision; the approval's event wakes it (pub/sub).
      const waiting = t.http.get(`/v1/tasks/${taskId}?waitSeconds=20`).set(agent.headers);
      const waitingDone = waiting.then((res) => res);
      await eventually(async () => stream.namesFor(taskId).includes("task_pending"));
      await t.http.post(`/v1/tasks/${taskId}/approve`).set(operatorHeaders(t)).send({}).expect(200);
      expect((await waitingDone).body.task.status).to.equal("approved");

      const jwt = await mintLease(t, agent, taskId, { resource: "demo-api", scopes: ["read"] });
      const recorded = await mintLease(t, agent, taskId, { resource: "records" });
      tokens.push(jwt.credential.token as string);
      leases.push(jwt.lease, recorded.lease);
      expect(await introspect(t, jwt.credential.token as string)).to.equal(true);
    }
    expect(await t.recording.liveArtifacts()).to.have.members(
      leases.filter((l) => l.resource === "records").map((l) => l.id),
    );

    for (const taskId of taskIds) {
      const done = await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
      expect(done.body.revoking).to.equal(2);
    }
    for (const token of tokens) expect(await introspect(t, token)).to.equal(false);
    for (const lease of leases) {
      const revoked = await leaseReaches(t, lease.id, "revoked", 15_000);
      expect(revoked.revokeReason).to.equal("task_completed");
    }
    expect(await t.recording.liveArtifacts()).to.deep.equal([]);

    const byAgent = await auditEvents(t, { agentId: agent.agentId });
    for (const taskId of taskIds) {
      const types = (await auditEvents(t, { taskId })).map((e) => e.type);
      expect(types).to.include.members(["task_created", "task_approved", "lease_issued", "task_completed"]);
      expect(types.filter((type) => type === "lease_revoked")).to.have.length(2);
      expect(byAgent.filter((e) => e.taskId === taskId).map((e) => e.type)).to.include("task_completed");
    }
    // Events from every shard come back merged in order of their ids (node time, sequence, shard).
    const positions = byAgent.map((e) => (e.id as string).split("-").map(Number) as [number, number, number]);
    const inOrder = [...positions].sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
    expect(positions).to.deep.equal(inOrder);
    expect(new Set(positions.map(([, , shard]) => shard)).size).to.be.greaterThan(1);
    const first = leases[1] as Lease;
    expect((await auditEvents(t, { leaseId: first.id })).map((e) => e.type)).to.include.members([
      "lease_issued",
      "lease_revoked",
    ]);

    expect(await t.broker.sealer.sealAll()).to.be.greaterThan(0);
    const verified = await t.http.get("/v1/audit/verify").set(operatorHeaders(t)).expect(200);
    expect(verified.body).to.include({ ok: true });
    expect(verified.body.events).to.be.greaterThan(0);

    for (const taskId of taskIds)
      await eventually(async () => stream.namesFor(taskId).filter((n) => n === "lease_revoked").length === 2);
    expect(stream.namesFor(taskIds[0] as string)).to.include.members([
      "task_pending",
      "task_approved",
      "task_completed",
    ]);
    return { agent, taskIds, leases };
  } finally {
    stream.close();
  }
}

/**
 * Expiry without anyone asking: leases reach their end and a task its own, the clock moves,
 * and the due sweeper (running in the broker's worker) claims them and revokes every one.
 */
export async function runExpiryPath(t: TestBroker, clock: ManualClock): Promise<void> {
  const agent = await agentSession(t);
  const leases: Lease[] = [];
  const shortTask = await createTask(t, agent, { ttlSeconds: 120 });
  leases.push((await mintLease(t, agent, shortTask, { ttlSeconds: 300 })).lease);
  for (let i = 0; i < 4; i++) {
    const taskId = await createTask(t, agent, { ttlSeconds: 3600 });
    for (let j = 0; j < 2; j++) leases.push((await mintLease(t, agent, taskId, { ttlSeconds: 60 })).lease);
  }
  clock.advance(61_000);
  for (const lease of leases.slice(1)) {
    const revoked = await leaseReaches(t, lease.id, "revoked", 15_000, clock);
    expect(revoked).to.include({ revokeReason: "expired", revokeRequestedAt: lease.expiresAt });
  }
  // This lease was cut to end with its task: the task's expiry ends both.
  clock.advance(60_000);
  const ended = await leaseReaches(t, (leases[0] as Lease).id, "revoked", 15_000, clock);
  expect(ended.revokeReason).to.equal("expired");
  await eventually(async () => (await t.broker.taskStore.get(shortTask))?.status === "expired");
  expect(await t.recording.liveArtifacts()).to.deep.equal([]);
  // Nothing is left for a sweeper to find.
  const left = await Promise.all(
    t.broker.keys.shards.flatMap((shard) => [
      t.broker.redis.zcard(shard.liveLeases),
      t.broker.redis.zcard(shard.revokingLeases),
      t.broker.redis.zcard(shard.failedLeases),
    ]),
  );
  expect(left.reduce((sum, n) => sum + n, 0)).to.equal(0);
}
