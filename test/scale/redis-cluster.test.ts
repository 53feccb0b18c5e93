import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import { startTestBroker, type TestBroker, type TestBrokerOptions } from "../helpers/broker.ts";
import { agentSession, createTask } from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";
import { type LocalRedisCluster, startRedisCluster } from "../helpers/redis-cluster.ts";
import { listen, runCoreFlow, runExpiryPath } from "./core-flow.ts";

describe("on a Redis Cluster of three masters", function () {
  this.timeout(90_000);
  let cluster: LocalRedisCluster;
  /**
   * Runs `test` with a test broker whose Redis is the cluster (its `records` adapter's
   * "backend" stays on the shared Redis), and closes it afterwards.
   */
  const onCluster = async (
    options: Omit<TestBrokerOptions, "config">,
    test: (t: TestBroker) => Promise<void>,
  ): Promise<void> => {
    const t = await startTestBroker({
      ...options,
      config: (raw) => {
        const { prefix } = raw.redis as { prefix: string };
        raw.redis = { cluster: { nodes: cluster.nodes }, prefix };
        // The outage test asks as fast as answers come: no agent limit in the way.
        raw.limits = { agentRequestsPerMinute: 100_000 };
      },
    });
    try {
      await test(t);
    } finally {
      await t.close();
    }
  };
  before(async () => {
    cluster = await startRedisCluster(3);
  });
  after(async () => {
    await cluster?.stop();
  });

  it("runs the core flow: approval, mint, introspection, completion revokes all, audit, verify, events", async () => {
    await onCluster({ name: "cluster-flow" }, async (t) => {
      const server = await listen(t);
      try {
        await runCoreFlow(t, server.base);
      } finally {
        await server.close();
      }
      // The records really are spread over the cluster: more than one master holds them.
      const holders: number[] = [];
      for (const port of cluster.ports) {
        const node = cluster.nodeClient(port);
        try {
          const [, keys] = await node.scan("0", "MATCH", `{${t.prefix}:*`, "COUNT", 100_000);
          if (keys.length > 0) holders.push(port);
        } finally {
          node.disconnect();
        }
      }
      expect(holders.length, "masters holding the broker's keys").to.be.greaterThan(1);
    });
  });

  it("revokes leases at their expiry and tasks at theirs through the due sweeper", async () => {
    const clock = new ManualClock();
    await onCluster({ name: "cluster-expiry", clock }, (t) => runExpiryPath(t, clock));
  });

  // Last: it takes the cluster down for a while. No BullMQ worker here: a worker's close can
  // hang after a cluster outage (its blocking connection never reports `end`; BullMQ #4065).
  it("answers 503 unavailable, never a 500 or a hang, while a master is stopped, and serves again once it is back", async () => {
    await onCluster({ name: "cluster-outage", workers: false }, async (t) => {
      const agent = await agentSession(t);
      const taskId = await createTask(t, agent);
      // Stop a master that does not hold the task: reads of it stay fast (many requests, each
      // counted against the agent's limit) until the cluster is declared down, then answer 503.
      const taskKey = t.broker.keys.forId(taskId).task(taskId);
      let stopped: number | undefined;
      for (const port of cluster.ports) {
        const node = cluster.nodeClient(port);
        try {
          // A master answers MOVED for a key of a slot it does not serve.
          const holds = await node.exists(taskKey).then(
            () => true,
            (error: Error) => !error.message.startsWith("MOVED"),
          );
          if (stopped === undefined && !holds) stopped = port;
        } finally {
          node.disconnect();
        }
      }
      if (stopped === undefined) throw new Error("every master holds the task?");
      cluster.signal(stopped, "SIGSTOP");
      try {
        // Past cluster-node-timeout (2 s) the other masters declare the cluster down — how long
        // past it depends on their gossip, slower on a busy machine. Four clients ask as fast as
        // answers come (each request counted against the agent's limit in Redis on the way in)
        // until a 503 has been seen and for a second after, or for 20 s at most.
        const statuses: number[] = [];
        const start = Date.now();
        let firstDown: number | undefined;
        const asking = () =>
          Date.now() < Math.min(start + 20_000, (firstDown ?? Number.POSITIVE_INFINITY) + 1000);
        await Promise.all(
          [1, 2, 3, 4].map(async () => {
            while (asking()) {
              const res = await t.http.get(`/v1/tasks/${taskId}`).set(agent.headers).timeout(5000);
              statuses.push(res.status);
              if (res.status === 200) continue;
              expect(res.body.error.code).to.equal("unavailable");
              firstDown ??= Date.now();
            }
          }),
        );
        expect(statuses[0], "answered before the cluster was declared down").to.equal(200);
        expect(statuses).to.include(503);
      } finally {
        cluster.signal(stopped as number, "SIGCONT");
      }
      await eventually(
        async () => (await t.http.get(`/v1/tasks/${taskId}`).set(agent.headers)).status === 200,
        20_000,
      );
      await t.http
        .post("/v1/tasks")
        .set(agent.headers)
        .send({ goal: "after the outage", resources: [{ resource: "records", scopes: ["read"] }] })
        .expect(201);
    });
  });
});
