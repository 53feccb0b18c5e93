import { mkdtemp, readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import express from "express";
import supertest, { type Response } from "supertest";
import { type EmbeddedRedis, freePort, startEmbeddedRedis } from "../../broker/embedded-redis.ts";
import { errorMiddleware, sendError } from "../../broker/http/error-middleware.ts";
import { type HotRouteParts, hotRoutes } from "../../broker/http/hot-routes.ts";
import {
  failFastWhileRedisDown,
  isRedisConnectionError,
  RedisHealth,
} from "../../broker/http/redis-health.ts";
import { createLogger } from "../../broker/logger.ts";
import { connectRedis } from "../../broker/redis.ts";
import { CapturedLogs, startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { eventually } from "../helpers/redis.ts";

/** Times a request; a request that hangs fails the test after `timeoutMs` instead. */
async function timed(request: PromiseLike<Response>): Promise<{ res: Response; ms: number }> {
  const started = performance.now();
  const res = await request;
  return { res, ms: Math.round(performance.now() - started) };
}

describe("Redis killed (SIGKILL) and restarted from its AOF under a live broker", () => {
  let dir: string;
  let port: number;
  let redis: EmbeddedRedis | undefined;
  let t: TestBroker | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "jitkey-outage-"));
    port = await freePort();
    redis = await startEmbeddedRedis(dir, { port });
  });
  after(async () => {
    await t?.close({ keepKeys: true });
    await redis?.stop();
  });

  it("answers 503 at once while Redis is down, recovers by itself, loses no lease, and revokes each lease due meanwhile exactly once", async function () {
    this.timeout(60_000);
    t = await startTestBroker({ name: "outage", redisUrl: redis?.url });
    const broker = t;
    const agent = { Authorization: `Bearer ${await broker.agentToken("agent-outage")}` };
    const op = { Authorization: `Bearer ${broker.operatorToken}` };
    const rs = { Authorization: `Bearer ${broker.introspectorToken}` };
    const task = {
      goal: "read records through an outage",
      resources: [{ resource: "records", scopes: ["read"] }],
    };

    const created = await broker.http.post("/v1/tasks").set(agent).send(task).expect(201);
    const taskId = created.body.task.id as string;
    await broker.http.post(`/v1/tasks/${taskId}/approve`).set(op).send({}).expect(200);
    const leaseIds: string[] = [];
    for (let i = 0; i < 5; i++) {
      const minted = await broker.http
        .post(`/v1/tasks/${taskId}/leases`)
        .set(agent)
        .send({ resource: "records", ttlSeconds: 3 })
        .expect(201);
      leaseIds.push(minted.body.lease.id);
    }
    // A jwt credential, to ask introspection about while Redis is gone.
    const demo = await broker.http
      .post("/v1/tasks")
      .set({ Authorization: `Bearer ${await broker.agentToken("repo:acme/app:ref:refs/heads/main")}` })
      .send({ goal: "read demo", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);
    const demoLease = await broker.http
      .post(`/v1/tasks/${demo.body.task.id}/leases`)
      .set({ Authorization: `Bearer ${await broker.agentToken("repo:acme/app:ref:refs/heads/main")}` })
      .send({ resource: "demo-api", ttlSeconds: 300 })
      .expect(201);
    expect(broker.recording.revokeCalls).to.equal(0);

    // SIGKILL: no shutdown, nothing flushed beyond what the AOF already holds. Whatever the
    // outage prints straight to stderr (not through the logger) is caught: it should be nothing.
    const printed: string[] = [];
    const consoleError = console.error;
    console.error = (...args: unknown[]) => void printed.push(args.map(String).join(" "));
    const pid = Number((await readFile(join(dir, "redis", "redis.pid"), "utf8")).trim());
    process.kill(pid, "SIGKILL");
    await eventually(async () => (await broker.http.get("/readyz")).status === 503, 5_000);

    const figures: Record<string, number> = {};
    const write = await timed(broker.http.post("/v1/tasks").set(agent).send(task).timeout(5_000));
    expect(write.res.status).to.equal(503);
    expect(write.res.body.error.code).to.equal("unavailable");
    expect(write.res.headers["retry-after"]).to.equal("1");
    figures.createTaskMs = write.ms;
    const mint = await timed(
      broker.http.post(`/v1/tasks/${taskId}/leases`).set(agent).send({ resource: "records" }).timeout(5_000),
    );
    expect(mint.res.status).to.equal(503);
    figures.mintMs = mint.ms;
    const release = await timed(broker.http.delete(`/v1/leases/${leaseIds[0]}`).set(agent).timeout(5_000));
    expect(release.res.status).to.equal(503);
    figures.releaseMs = release.ms;
    const introspection = await timed(
      broker.http
        .post("/v1/introspect")
        .set(rs)
        .type("form")
        .send({ token: demoLease.body.credential.token })
        .timeout(5_000),
    );
    // Fail closed: never `active: true` on a state nobody can read.
    expect(introspection.res.status).to.equal(503);
    figures.introspectMs = introspection.ms;
    const ready = await timed(broker.http.get("/readyz").timeout(5_000));
    expect(ready.res.status).to.equal(503);
    expect(ready.res.body).to.include({ status: "not_ready", redis: false });
    figures.readyzMs = ready.ms;
    await broker.http.get("/healthz").expect(200);

    // Every lease falls due while Redis is down.
    await new Promise((resolve) => setTimeout(resolve, 3_500));
    expect(broker.recording.revokeCalls, "nothing can be revoked without the queue").to.equal(0);

    const restarted = performance.now();
    redis = await startEmbeddedRedis(dir, { port });
    await eventually(async () => (await broker.http.get("/readyz")).status === 200, 20_000);
    figures.recoveryMs = Math.round(performance.now() - restarted);

    // No lease was lost: each is back from the AOF, and each due one is revoked, once.
    const revoked = await eventually(async () => {
      const leases = await Promise.all(
        leaseIds.map(
          async (id) => (await broker.http.get(`/v1/leases/${id}`).set(op).expect(200)).body.lease,
        ),
      );
      return leases.every((lease) => lease.status === "revoked") ? leases : undefined;
    }, 20_000);
    figures.allRevokedMs = Math.round(performance.now() - restarted);
    expect(revoked.map((lease) => lease.revokeReason)).to.deep.equal(leaseIds.map(() => "expired"));
    for (const id of leaseIds) expect(broker.recording.revokeCallsByLease.get(id), id).to.equal(1);
    expect(await broker.recording.liveArtifacts()).to.not.include.members(leaseIds);
    for (const id of leaseIds) {
      const audit = await broker.http.get(`/v1/audit?leaseId=${id}`).set(op).expect(200);
      const types = (audit.body.events as { type: string }[]).map((event) => event.type);
      expect(
        types.filter((type) => type === "lease_revoked"),
        id,
      ).to.have.length(1);
    }

    console.error = consoleError;
    expect(printed, "raw output during the outage").to.deep.equal([]);

    // And the broker works again without a restart.
    const again = await broker.http.post("/v1/tasks").set(agent).send(task).expect(201);
    expect(again.body.task.status).to.equal("pending");
    const introspected = await broker.http
      .post("/v1/introspect")
      .set(rs)
      .type("form")
      .send({ token: demoLease.body.credential.token })
      .expect(200);
    expect(introspected.body.active).to.equal(true);
    process.stdout.write(`      figures: ${JSON.stringify(figures)}\n`);
  });
});

/**
 * Runs `test` with a Redis of its own, a queue connection to it (which waits for Redis forever,
 * as BullMQ needs: what an enqueue runs on), that connection's health, and `kill()`, which
 * stops that Redis for good.
 */
async function withDroppingRedis(
  name: string,
  test: (parts: {
    queue: ReturnType<typeof connectRedis>;
    health: RedisHealth;
    logger: ReturnType<typeof createLogger>;
    kill(): Promise<void>;
  }) => Promise<void>,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), `jitkey-${name}-`));
  const redis = await startEmbeddedRedis(dir, { port: await freePort() });
  const queue = connectRedis(redis.url, { forQueues: true });
  const logger = createLogger({ level: "error", sink: new CapturedLogs() });
  try {
    await queue.ping();
    await test({
      queue,
      health: new RedisHealth({ queue }, logger),
      logger,
      async kill() {
        process.kill(Number((await readFile(join(dir, "redis", "redis.pid"), "utf8")).trim()), "SIGKILL");
      },
    });
  } finally {
    queue.disconnect();
    await redis.stop();
  }
}

describe("a request waiting on Redis when the connection drops", () => {
  it("answers 503 unavailable instead of waiting for Redis to come back", async function () {
    this.timeout(20_000);
    await withDroppingRedis("inflight", async ({ queue, health, logger, kill }) => {
      const app = express();
      app.use("/v1", failFastWhileRedisDown(health, sendError));
      app.get("/v1/stuck", async (_req, res) => {
        // Blocks until Redis answers, which it never does once killed.
        res.json({ popped: await queue.blpop("jitkey-inflight-never", 0) });
      });
      app.use(errorMiddleware(logger, health));
      const pending = timed(supertest(app).get("/v1/stuck").timeout(10_000));
      await new Promise((resolve) => setTimeout(resolve, 200));
      await kill();
      const { res, ms } = await pending;
      expect(res.status).to.equal(503);
      expect(res.body.error.code).to.equal("unavailable");
      expect(res.headers["retry-after"]).to.equal("1");
      // Sent 200 ms before the kill, answered about half a second after it.
      expect(ms).to.be.below(5_000);
      // A request arriving while Redis is gone is answered without waiting at all.
      expect((await supertest(app).get("/v1/stuck").timeout(5_000)).status).to.equal(503);
    });
  });
});

describe("a hot route waiting on Redis when the connection drops", () => {
  it("answers 503 unavailable with every common header, as the Express routes do", async function () {
    this.timeout(20_000);
    await withDroppingRedis("hot-inflight", async ({ queue, health, logger, kill }) => {
      // Introspection that blocks until Redis answers, which it never does once killed.
      let entered: () => void = () => undefined;
      const waiting = new Promise<void>((resolve) => {
        entered = resolve;
      });
      const broker = {
        logger,
        introspection: {
          introspect: async () => {
            entered();
            return { active: await queue.blpop("jitkey-hot-never", 0) };
          },
          json: JSON.stringify,
        },
      };
      const parts: HotRouteParts = {
        auth: { requireCaller: async () => ({ kind: "operator", id: "ops" }) } as never,
        health,
        fixedHeaders: [["X-Frame-Options", "DENY"]],
        requestHeaders: [],
        bodyParsers: [],
        bodyLimit: 1024,
        formParameterLimit: 10,
        bodyTypes: ["application/x-www-form-urlencoded"],
        trustProxy: () => false,
        logRequest: () => undefined,
      };
      const hot = hotRoutes(broker as never, parts);
      const listener = (req: IncomingMessage, res: ServerResponse) => {
        if (!hot(req, res)) res.writeHead(404).end();
      };
      const introspect = () =>
        timed(supertest(listener).post("/v1/introspect").type("form").send({ token: "t" }).timeout(10_000));
      const pending = introspect();
      // The request waits on Redis before Redis goes: the 503 must come from the wait.
      await waiting;
      await kill();
      const { res, ms } = await pending;
      expect(res.status).to.equal(503);
      expect(res.body.error.code).to.equal("unavailable");
      expect(res.headers).to.include({
        "retry-after": "1",
        "x-frame-options": "DENY",
        "cache-control": "no-store",
        "x-request-id": res.body.error.requestId,
      });
      expect(ms).to.be.below(5_000);
      // A request arriving while Redis is gone is answered at once, with the same headers.
      const later = await introspect();
      expect(later.res.status).to.equal(503);
      expect(later.res.headers).to.include({ "x-frame-options": "DENY", "cache-control": "no-store" });
    });
  });
});

describe("telling a Redis connection failure from other errors", () => {
  it("sees one inside a failed MULTI, and survives an error listed among its own previous errors", () => {
    const closed = new Error("Connection is closed.");
    const aborted = Object.assign(new Error("EXECABORT Transaction discarded"), { previousErrors: [closed] });
    expect(isRedisConnectionError(aborted)).to.equal(true);
    const looped = Object.assign(new Error("EXECABORT Transaction discarded"), {
      previousErrors: [] as Error[],
    });
    looped.previousErrors.push(looped);
    expect(isRedisConnectionError(looped)).to.equal(false);
    looped.previousErrors.push(closed);
    expect(isRedisConnectionError(looped)).to.equal(true);
    expect(isRedisConnectionError(new Error("WRONGTYPE Operation against a key"))).to.equal(false);
  });
});
