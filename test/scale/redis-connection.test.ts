import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { Cluster, Redis } from "ioredis";
import { applyEnvironment, ConfigError, parseConfig } from "../../broker/config.ts";
import { connectRedis, type RedisClient, redisVersionProblem } from "../../broker/redis.ts";
import { startTestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, leaseReaches, mintLease } from "../helpers/flows.ts";
import { TestIssuer } from "../helpers/identity.ts";
import { spawnBroker } from "../helpers/process.ts";
import { testRedis, uniquePrefix } from "../helpers/redis.ts";
import { type LocalRedisTls, startRedisTls } from "../helpers/redis-cluster.ts";

/** A minimal valid config with `redis` as given. */
function rawWith(redis: Record<string, unknown>): Record<string, unknown> {
  return {
    identity: {
      audience: "jitkey",
      issuers: [{ name: "ci", issuer: "https://issuer.test/ci", jwks: { keys: [{ kty: "EC" }] } }],
    },
    redis,
  };
}

/** The fields a ConfigError names, one per line (`redis.cluster: ...` → `redis.cluster`). */
function badFields(redis: Record<string, unknown>): string[] {
  try {
    parseConfig(rawWith(redis));
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    return (error as Error).message
      .split("\n")
      .slice(1)
      .map((line) => line.slice(0, line.indexOf(":")));
  }
  throw new Error("expected the redis section to be refused");
}

describe("redis connection settings: one Redis, a Cluster or Sentinel", () => {
  const opened: RedisClient[] = [];
  /** Opens a client only to look at the options it was given; it never reaches a server. */
  const inspect = (client: RedisClient) => {
    opened.push(client);
    client.on("error", () => {});
    return client;
  };
  afterEach(() => {
    for (const client of opened.splice(0)) client.disconnect();
    delete process.env.JKTEST_REDIS_PASSWORD;
  });

  it("refuses more than one of url, cluster and sentinel, also when REDIS_URL adds a url", () => {
    const cluster = { nodes: ["redis://10.0.0.1:6379"] };
    const sentinel = { sentinels: [{ host: "10.0.0.2", port: 26379 }], name: "jitkey" };
    expect(badFields({ url: "redis://10.0.0.1:6379", cluster })).to.deep.equal(["redis.cluster"]);
    expect(badFields({ cluster, sentinel })).to.deep.equal(["redis.sentinel"]);
    const fromEnv = applyEnvironment(rawWith({ cluster }), { REDIS_URL: "redis://127.0.0.1:6379/0" });
    expect(() => parseConfig(fromEnv)).to.throw(ConfigError, /redis\.cluster/);
    // None at all is valid: `jitkey` then runs its private redis-server.
    expect(parseConfig(rawWith({})).redis).to.deep.equal({ prefix: "jitkey", shards: 16 });
  });

  it("refuses node URLs with credentials or a database, mixed TLS, and TLS settings on redis://", () => {
    expect(badFields({ cluster: { nodes: ["redis://user:secret@10.0.0.1:6379"] } })).to.deep.equal([
      "redis.cluster.nodes.0",
    ]);
    expect(badFields({ cluster: { nodes: ["redis://10.0.0.1:6379/2"] } })).to.deep.equal([
      "redis.cluster.nodes.0",
    ]);
    expect(
      badFields({ cluster: { nodes: ["redis://10.0.0.1:6379", "rediss://10.0.0.2:6379"] } }),
    ).to.deep.equal(["redis.cluster.nodes"]);
    expect(badFields({ url: "redis://10.0.0.1:6379", tls: {} })).to.deep.equal(["redis.tls"]);
    expect(badFields({ url: "http://10.0.0.1:6379" })).to.deep.equal(["redis.url"]);
    expect(badFields({ url: "redis://:inline@10.0.0.1:6379", password: "again" })).to.deep.equal([
      "redis.password",
    ]);
    expect(
      badFields({ sentinel: { sentinels: [{ host: "h", port: 1 }], name: "m", tls: true } }),
    ).to.deep.equal(["redis.sentinel.tls"]);
  });

  it("reads passwords from secret refs and CA files when the config is parsed, naming the field when it cannot", () => {
    expect(
      badFields({ url: "rediss://10.0.0.1:6380", tls: { caFile: "/nonexistent/ca.pem" } }),
    ).to.deep.equal(["redis.tls.caFile"]);
    expect(
      badFields({ url: "redis://10.0.0.1:6379", password: { env: "JKTEST_REDIS_PASSWORD" } }),
    ).to.deep.equal(["redis.password"]);
    process.env.JKTEST_REDIS_PASSWORD = "from-the-environment";
    const config = parseConfig(
      rawWith({ url: "redis://10.0.0.1:6379", password: { env: "JKTEST_REDIS_PASSWORD" } }),
    );
    expect(config.redis.password).to.equal("from-the-environment");
  });

  it("opens a Cluster client with the ACL login and TLS on every node, never giving up on queue commands", () => {
    const target = {
      cluster: { nodes: ["rediss://127.0.0.1:1", "rediss://127.0.0.1:2"] },
      username: "jitkey",
      password: "s3cret",
      tls: { caFile: "-----BEGIN CERTIFICATE-----\n", servername: "redis.internal" },
    };
    const api = inspect(connectRedis(target, { name: "jitkey-api" }));
    expect(api).to.be.instanceOf(Cluster);
    const apiNodes = (api as Cluster).options.redisOptions ?? {};
    expect(apiNodes).to.include({
      username: "jitkey",
      password: "s3cret",
      maxRetriesPerRequest: 2,
      commandTimeout: 1000,
    });
    expect(apiNodes.tls).to.deep.include({ ca: target.tls.caFile, servername: "redis.internal" });
    const queue = inspect(connectRedis(target, { forQueues: true }));
    const queueNodes = (queue as Cluster).options.redisOptions ?? {};
    expect(queueNodes.maxRetriesPerRequest).to.equal(null);
    expect(queueNodes).to.not.have.property("commandTimeout");
    // rediss:// alone turns TLS on with the system's CAs.
    const plain = inspect(connectRedis({ cluster: { nodes: ["rediss://127.0.0.1:1"] } }));
    expect((plain as Cluster).options.redisOptions?.tls).to.deep.equal({});
  });

  it("opens a Sentinel client with the master's and the sentinels' logins and TLS", () => {
    const client = inspect(
      connectRedis({
        sentinel: {
          sentinels: [{ host: "127.0.0.1", port: 1 }],
          name: "jitkey",
          username: "sentinel-user",
          password: "sentinel-pass",
          tls: true,
          db: 3,
        },
        username: "jitkey",
        password: "master-pass",
        tls: { caFile: "CA" },
      }),
    );
    expect(client).to.be.instanceOf(Redis);
    expect((client as Redis).options).to.deep.include({
      name: "jitkey",
      db: 3,
      username: "jitkey",
      password: "master-pass",
      sentinelUsername: "sentinel-user",
      sentinelPassword: "sentinel-pass",
      enableTLSForSentinelMode: true,
      commandTimeout: 1000,
    });
    expect((client as Redis).options.sentinelTLS).to.deep.include({ ca: "CA" });
    expect((client as Redis).options.tls).to.deep.include({ ca: "CA" });
  });

  describe("over TLS with an ACL user", function () {
    this.timeout(60_000);
    const password = randomBytes(12).toString("hex");
    let server: LocalRedisTls;
    before(async () => {
      server = await startRedisTls("jitkey", password);
    });
    after(async () => {
      await server?.stop();
    });
    const onTls = (tls: Record<string, unknown>, name: string) =>
      startTestBroker({
        name,
        config: (raw) => {
          const { prefix } = raw.redis as { prefix: string };
          process.env.JKTEST_REDIS_PASSWORD = password;
          raw.redis = {
            url: server.url,
            username: "jitkey",
            password: { env: "JKTEST_REDIS_PASSWORD" },
            tls,
            prefix,
          };
        },
      });

    it("runs a task through its revocation on a rediss:// URL, trusting the configured CA", async () => {
      const t = await onTls({ caFile: server.caFile }, "tls");
      try {
        const agent = await agentSession(t);
        const taskId = await createTask(t, agent);
        const { lease } = await mintLease(t, agent, taskId);
        await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
        expect((await leaseReaches(t, lease.id, "revoked")).revokeReason).to.equal("task_completed");
      } finally {
        await t.close();
      }
    });

    it("refuses to start when the server's certificate does not chain to the configured CA, saying why", async () => {
      // The other CA's PEM really is a CA: only the chain is wrong.
      expect(await readFile(server.otherCaFile, "utf8")).to.include("BEGIN CERTIFICATE");
      const dir = await mkdtemp(join(tmpdir(), "jitkey-tls-"));
      try {
        const config = join(dir, "config.json");
        const issuer = await TestIssuer.create("ci");
        await writeFile(
          config,
          JSON.stringify({
            http: { port: 0 },
            identity: { audience: "jitkey", issuers: [issuer.config()] },
            redis: {
              url: server.url,
              username: "jitkey",
              password: { env: "JKTEST_REDIS_PASSWORD" },
              tls: { caFile: server.otherCaFile },
              prefix: uniquePrefix("tls-wrong-ca"),
            },
          }),
        );
        const broker = spawnBroker(
          { JITKEY_CONFIG: config, JITKEY_DATA_DIR: dir, JKTEST_REDIS_PASSWORD: password },
          ["serve"],
        );
        expect(await broker.exited).to.equal(1);
        expect(broker.stdout()).to.not.include("jitkey started");
        expect(broker.stderr()).to.match(/certificate|SSL/);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
});

describe("the Redis version the broker needs", () => {
  it("refuses Redis before 6.2 by name, and takes 6.2, 7.x, Valkey and an INFO that does not say", () => {
    expect(redisVersionProblem("# Server\r\nredis_version:6.0.16\r\nredis_mode:standalone\r\n")).to.equal(
      "Redis 6.0 is too old: jitkey needs Redis 6.2 or later",
    );
    expect(redisVersionProblem("redis_version:5.0.7\r\n")).to.match(/Redis 5\.0 is too old/);
    for (const fine of [
      "redis_version:6.2.0\r\n",
      "redis_version:7.0.15\r\n",
      "redis_version:7.2.4\r\nserver_name:valkey\r\n",
      "",
    ])
      expect(redisVersionProblem(fine)).to.equal(undefined);
  });

  it("lets a broker start on the Redis the tests run against", async () => {
    const client = testRedis();
    try {
      expect(redisVersionProblem(await client.info("server"))).to.equal(undefined);
    } finally {
      client.disconnect();
    }
  });
});
