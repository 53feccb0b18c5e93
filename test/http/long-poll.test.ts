import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, operatorHeaders } from "../helpers/flows.ts";
import { type BrokerProcess, spawnBroker, waitForStart } from "../helpers/process.ts";
import { testRedisUrl } from "../helpers/redis.ts";

describe("waiting for a decision without polling", function () {
  this.timeout(60_000);
  let t: TestBroker;
  let other: BrokerProcess | undefined;
  let otherUrl: string;
  before(async () => {
    t = await startTestBroker({ name: "long-poll" });
    // A second broker process over the same Redis state, where the operator decides.
    const dir = await mkdtemp(join(tmpdir(), "jitkey-long-poll-"));
    const config = join(dir, "config.json");
    await writeFile(config, JSON.stringify({ ...t.config, http: { port: 0, host: "127.0.0.1" } }));
    other = spawnBroker({ JITKEY_CONFIG: config, REDIS_URL: testRedisUrl() }, ["serve"]);
    otherUrl = (await waitForStart(other)).url;
  });
  after(async () => {
    other?.child.kill("SIGTERM");
    await other?.exited;
    await t.close();
  });

  const approveElsewhere = async (taskId: string, decision: "approve" | "deny") => {
    const res = await fetch(`${otherUrl}/v1/tasks/${taskId}/${decision}`, {
      method: "POST",
      headers: { ...operatorHeaders(t), "content-type": "application/json" },
      body: "{}",
    });
    expect(res.status).to.equal(200);
    return performance.now();
  };

  it("answers a waiting read the moment another broker process approves the task", async () => {
    const agent = await agentSession(t);
    const lags: number[] = [];
    for (let trial = 0; trial < 3; trial++) {
      const taskId = await createTask(t, agent, { approve: false });
      const started = performance.now();
      const waiting = t.http
        .get(`/v1/tasks/${taskId}?waitSeconds=30`)
        .set(agent.headers)
        .then((res) => ({
          res,
          at: performance.now(),
        }));
      await new Promise((resolve) => setTimeout(resolve, 200));
      const approvedAt = await approveElsewhere(taskId, "approve");
      const { res, at } = await waiting;
      expect(res.status).to.equal(200);
      expect(res.body.task.status).to.equal("approved");
      expect(at - started).to.be.greaterThan(150);
      lags.push(at - approvedAt);
    }
    // Pub/sub, not a sleep loop: within 100 ms of the approval (the best of three, on a busy machine).
    expect(Math.min(...lags)).to.be.lessThan(100);
    for (const lag of lags) expect(lag).to.be.lessThan(1000);
  });

  it("answers a denial too, and at once for a task that is no longer pending", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { approve: false });
    const waiting = t.http.get(`/v1/tasks/${taskId}?waitSeconds=30`).set(agent.headers);
    await new Promise((resolve) => setTimeout(resolve, 100));
    await approveElsewhere(taskId, "deny");
    expect((await waiting).body.task.status).to.equal("denied");
    const started = performance.now();
    const again = await t.http.get(`/v1/tasks/${taskId}?waitSeconds=30`).set(agent.headers).expect(200);
    expect(again.body.task.status).to.equal("denied");
    expect(performance.now() - started).to.be.lessThan(5000);
  });

  it("answers a still pending task after waitSeconds, and refuses a wait over 60 s", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { approve: false });
    const started = performance.now();
    const res = await t.http.get(`/v1/tasks/${taskId}?waitSeconds=1`).set(agent.headers).expect(200);
    expect(res.body.task.status).to.equal("pending");
    expect(performance.now() - started).to.be.greaterThan(900);
    const bad = await t.http.get(`/v1/tasks/${taskId}?waitSeconds=61`).set(agent.headers).expect(400);
    expect(bad.body.error.code).to.equal("invalid_request");
  });
});
