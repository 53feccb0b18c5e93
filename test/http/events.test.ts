import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect } from "chai";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, leaseReaches, mintLease, operatorHeaders } from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";

/** An open `GET /v1/events` stream and the events it has delivered so far. */
class EventStream {
  readonly events: { id: string; name: string; data: Record<string, unknown> }[] = [];
  readonly #abort = new AbortController();
  status = 0;
  contentType = "";

  static async open(url: string, headers: Record<string, string>): Promise<EventStream> {
    const stream = new EventStream();
    const res = await fetch(url, { headers, signal: stream.#abort.signal });
    stream.status = res.status;
    stream.contentType = res.headers.get("content-type") ?? "";
    if (res.ok && res.body) void stream.read(res.body);
    else await res.body?.cancel();
    return stream;
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for await (const chunk of body) {
        buffer += decoder.decode(chunk, { stream: true });
        let end = buffer.indexOf("\n\n");
        while (end >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const fields = Object.fromEntries(
            frame
              .split("\n")
              .filter((line) => !line.startsWith(":") && line.includes(": "))
              .map((line) => [line.slice(0, line.indexOf(": ")), line.slice(line.indexOf(": ") + 2)]),
          );
          if (fields.event && fields.data)
            this.events.push({ id: fields.id ?? "", name: fields.event, data: JSON.parse(fields.data) });
          end = buffer.indexOf("\n\n");
        }
      }
    } catch {
      // Closed by the test.
    }
  }

  names(taskId: string): string[] {
    return this.events.filter((e) => e.data.taskId === taskId).map((e) => e.name);
  }

  close(): void {
    this.#abort.abort();
  }
}

describe("GET /v1/events: operators hear what happens, as it happens", function () {
  this.timeout(30_000);
  let t: TestBroker;
  let server: Server;
  let base: string;
  const streams: EventStream[] = [];
  const open = async (headers: Record<string, string>, query = "") => {
    const stream = await EventStream.open(`${base}/v1/events${query}`, headers);
    streams.push(stream);
    return stream;
  };
  before(async () => {
    t = await startTestBroker({ name: "events" });
    server = createServer(t.app).listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    for (const stream of streams) stream.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await t.close();
  });

  it("streams a task's life: pending, approved, completed, and its lease revoked", async () => {
    const stream = await open(operatorHeaders(t));
    expect(stream.status).to.equal(200);
    expect(stream.contentType).to.match(/^text\/event-stream/);
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { approve: false });
    await eventually(async () => stream.names(taskId).includes("task_pending"));
    await t.http.post(`/v1/tasks/${taskId}/approve`).set(operatorHeaders(t)).send({}).expect(200);
    const { lease } = await mintLease(t, agent, taskId);
    await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
    await leaseReaches(t, lease.id, "revoked");
    await eventually(async () => stream.names(taskId).includes("lease_revoked"));
    expect(stream.names(taskId)).to.deep.equal([
      "task_pending",
      "task_approved",
      "task_completed",
      "lease_revoked",
    ]);
    const pending = stream.events.find((e) => e.name === "task_pending" && e.data.taskId === taskId);
    expect(pending?.data).to.include({
      type: "task_created",
      status: "pending",
      goal: "Reconcile the ledger",
    });
    expect(pending?.id).to.equal(pending?.data.id);
  });

  it("resumes after Last-Event-ID with what was missed, and filters by type", async () => {
    const agent = await agentSession(t);
    const first = await open(operatorHeaders(t));
    const taskId = await createTask(t, agent, { approve: false });
    await eventually(async () => first.names(taskId).includes("task_pending"));
    const lastSeen = first.events.find((e) => e.data.taskId === taskId)?.id as string;
    first.close();
    await t.http.post(`/v1/tasks/${taskId}/deny`).set(operatorHeaders(t)).send({ note: "no" }).expect(200);

    const resumed = await open({ ...operatorHeaders(t), "Last-Event-ID": lastSeen });
    await eventually(async () => resumed.names(taskId).includes("task_denied"));
    expect(resumed.names(taskId)).to.deep.equal(["task_denied"]);

    const onlyPending = await open(operatorHeaders(t), "?types=task_pending");
    const other = await createTask(t, agent, { approve: false });
    await t.http.post(`/v1/tasks/${other}/approve`).set(operatorHeaders(t)).send({}).expect(200);
    await eventually(async () => onlyPending.names(other).length > 0);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(onlyPending.names(other)).to.deep.equal(["task_pending"]);
  });

  it("is for operators only, and refuses an unknown event type", async () => {
    const agent = await agentSession(t);
    expect((await open({})).status).to.equal(401);
    expect((await open(agent.headers)).status).to.equal(403);
    expect((await open(operatorHeaders(t), "?types=lease_issued")).status).to.equal(400);
  });
});
