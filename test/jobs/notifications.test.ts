import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect } from "chai";
import { Webhook } from "standardwebhooks";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, leaseReaches, metricValue, mintLease } from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";

interface Received {
  path: string;
  headers: IncomingMessage["headers"];
  body: string;
}

/** A webhook receiver: records requests; `answer` decides each status (and may hang). */
class Receiver {
  readonly received: Received[] = [];
  answer: (request: Received) => Promise<number> | number = () => 204;
  #server: Server | undefined;
  url = "";

  async start(): Promise<void> {
    this.#server = createServer((req, res) => {
      let body = "";
      req.on("data", (chunk) => {
        body += chunk;
      });
      req.on("end", async () => {
        const request = { path: req.url ?? "", headers: req.headers, body };
        this.received.push(request);
        res.writeHead(await this.answer(request)).end();
      });
    });
    this.#server.listen(0, "127.0.0.1");
    await new Promise((resolve) => this.#server?.once("listening", resolve));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.#server?.closeAllConnections();
    await new Promise((resolve) => this.#server?.close(resolve));
  }

  at(path: string): Received[] {
    return this.received.filter((request) => request.path === path);
  }
}

describe("webhooks: approvers and on-call hear of events, signed, retried, never in the way", function () {
  this.timeout(30_000);
  const secret = `whsec_${randomBytes(32).toString("base64")}`;
  let t: TestBroker;
  const receiver = new Receiver();
  before(async () => {
    await receiver.start();
    t = await startTestBroker({
      name: "webhooks",
      config: (raw) => {
        raw.notifications = {
          webhooks: [
            {
              name: "approvers",
              url: `${receiver.url}/approvers`,
              events: ["task_pending", "lease_revoke_failed"],
              secret,
            },
            { name: "chat", url: `${receiver.url}/chat`, events: ["task_pending"], secret, format: "slack" },
          ],
          attempts: 4,
          backoffMs: 50,
        };
      },
    });
  });
  after(async () => {
    await t.close();
    await receiver.stop();
  });
  beforeEach(() => {
    receiver.received.length = 0;
    receiver.answer = () => 204;
  });

  const verified = (request: Received) =>
    new Webhook(secret).verify(request.body, {
      "webhook-id": String(request.headers["webhook-id"]),
      "webhook-timestamp": String(request.headers["webhook-timestamp"]),
      "webhook-signature": String(request.headers["webhook-signature"]),
    }) as { type: string; timestamp: string; data: Record<string, unknown> };

  it("posts task_pending signed per Standard Webhooks, and a Slack-style message", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { approve: false });
    await eventually(async () => receiver.at("/approvers").length === 1 && receiver.at("/chat").length === 1);
    const payload = verified(receiver.at("/approvers")[0] as Received);
    expect(payload.type).to.equal("task_pending");
    expect(payload.data).to.include({
      taskId,
      agentId: agent.agentId,
      type: "task_created",
      status: "pending",
    });
    expect(receiver.at("/approvers")[0]?.headers["webhook-id"]).to.equal(`evt_${payload.data.id}`);
    const chat = JSON.parse(receiver.at("/chat")[0]?.body ?? "{}");
    expect(chat.text).to.include(`jitkey approve ${taskId}`);
    // Signed with the secret: a tampered body does not verify.
    const tampered = { ...(receiver.at("/approvers")[0] as Received), body: '{"type":"task_pending"}' };
    expect(() => verified(tampered)).to.throw();
  });

  it("answers the request that caused an event at once, even while the receiver hangs", async () => {
    let release: () => void = () => {};
    receiver.answer = () =>
      new Promise((resolve) => {
        release = () => resolve(204);
      });
    const agent = await agentSession(t);
    const started = performance.now();
    await createTask(t, agent, { approve: false });
    expect(performance.now() - started).to.be.lessThan(2000);
    await eventually(async () => receiver.received.length >= 1);
    release();
  });

  it("retries a failing receiver with backoff until it accepts, with the same message id", async () => {
    let calls = 0;
    receiver.answer = (request) => (request.path === "/approvers" && ++calls < 3 ? 503 : 204);
    const agent = await agentSession(t);
    await createTask(t, agent, { approve: false });
    await eventually(async () => receiver.at("/approvers").length === 3);
    const ids = new Set(receiver.at("/approvers").map((request) => request.headers["webhook-id"]));
    expect(ids.size).to.equal(1);
    for (const request of receiver.at("/approvers")) verified(request);
    await eventually(
      async () =>
        (await metricValue(
          t,
          "jitkey_webhook_deliveries_total",
          'jitkey_webhook_deliveries_total{webhook="approvers",result="delivered"}',
        )) >= 1,
    );
  });

  it("tells on-call when a lease cannot be revoked", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    t.recording.revokePermanent = true;
    try {
      await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
      await leaseReaches(t, lease.id, "revoke_failed");
      await eventually(async () =>
        receiver.at("/approvers").some((request) => verified(request).type === "lease_revoke_failed"),
      );
      const event = receiver
        .at("/approvers")
        .map(verified)
        .find((p) => p.type === "lease_revoke_failed");
      expect(event?.data).to.include({ leaseId: lease.id, resource: "records" });
    } finally {
      t.recording.revokePermanent = false;
    }
  });

  it("delivers an event a dead dispatcher read but never acknowledged, once", async () => {
    const agent = await agentSession(t);
    await t.broker.notifications.stop();
    const shard = t.broker.keys.forId((await createTask(t, agent, { approve: false })) as string);
    // A dispatcher that read the event and died before acknowledging it.
    await t.redis.xreadgroup(
      "GROUP",
      "jitkey-notifications",
      "dead-worker",
      "COUNT",
      100,
      "STREAMS",
      shard.audit,
      ">",
    );
    const { NotificationDispatcher } = await import("../../jobs/notifications.ts");
    const { notificationQueue } = await import("../../jobs/notifications.ts");
    const queue = notificationQueue(
      t.broker.queueConnection,
      t.broker.keys.queuePrefix,
      t.config.notifications,
    );
    const rescuer = new NotificationDispatcher({
      redis: t.broker.redis,
      keys: t.broker.keys,
      queue,
      notifications: t.config.notifications,
      logger: t.broker.logger,
      claimAfterMs: 50,
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await rescuer.dispatchOnce()).to.equal(2);
    expect(await rescuer.dispatchOnce()).to.equal(0);
    await queue.close();
    await eventually(async () => receiver.at("/approvers").length === 1 && receiver.at("/chat").length === 1);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(receiver.at("/approvers")).to.have.length(1);
  });
});
