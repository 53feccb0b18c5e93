import { expect } from "chai";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask } from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";
import { type LocalRedisSentinel, startRedisSentinel } from "../helpers/redis-cluster.ts";
import { listen, runCoreFlow } from "./core-flow.ts";

describe("through Redis Sentinel", function () {
  this.timeout(60_000);
  let sentinel: LocalRedisSentinel;
  let t: TestBroker;
  before(async () => {
    sentinel = await startRedisSentinel();
    t = await startTestBroker({
      name: "sentinel",
      config: (raw) => {
        const { prefix } = raw.redis as { prefix: string };
        raw.redis = { sentinel: { sentinels: [sentinel.sentinel], name: sentinel.name }, prefix };
      },
    });
  });
  after(async () => {
    await t?.close();
    await sentinel?.stop();
  });

  it("runs the core flow on the master the sentinel names", async () => {
    const server = await listen(t);
    try {
      await runCoreFlow(t, server.base, 3);
    } finally {
      await server.close();
    }
    const master = sentinel.masterClient();
    try {
      const [, keys] = await master.scan("0", "MATCH", `{${t.prefix}:*`, "COUNT", 100_000);
      expect(keys.length).to.be.greaterThan(0);
    } finally {
      master.disconnect();
    }
  });

  it("answers 503 unavailable while the master hangs, and serves again once it is back", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    sentinel.signalMaster("SIGSTOP");
    try {
      const res = await t.http.get(`/v1/tasks/${taskId}`).set(agent.headers).timeout(5000);
      expect(res.status).to.equal(503);
      expect(res.body.error.code).to.equal("unavailable");
    } finally {
      sentinel.signalMaster("SIGCONT");
    }
    await eventually(
      async () => (await t.http.get(`/v1/tasks/${taskId}`).set(agent.headers)).status === 200,
      20_000,
    );
  });
});
