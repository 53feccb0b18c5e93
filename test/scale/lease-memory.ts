/**
 * How much Redis memory one live lease costs: its record, its places in the due and lookup
 * indexes, its handle, its audit events with their index entries, and its share of its task.
 * Mints `LEASES` leases (`LEASES_PER_TASK` a task) on a private redis-server and reads
 * `used_memory` before and after. Run: `node --import tsx test/scale/lease-memory.ts`.
 * Loopback only; the server and its directory are removed afterwards.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CredentialAdapter } from "../../adapters/types.ts";
import { createBroker } from "../../broker/broker.ts";
import { parseConfig } from "../../broker/config.ts";
import { startEmbeddedRedis } from "../../broker/embedded-redis.ts";
import { createLogger } from "../../broker/logger.ts";
import { connectRedis } from "../../broker/redis.ts";
import { TestIssuer } from "../helpers/identity.ts";

const LEASES = Number(process.env.LEASES ?? 20_000);
const LEASES_PER_TASK = Number(process.env.LEASES_PER_TASK ?? 4);
const CONCURRENCY = 32;

/** A backend credential that costs Redis nothing itself: only the broker's own records are measured. */
const measuredAdapter: CredentialAdapter = {
  kind: "measured",
  capabilities: { revocation: "backend", renewable: false },
  async issue(request) {
    return {
      credential: { type: "measured", expiresAt: request.expiresAt.toISOString() },
      handle: `role/${request.leaseId}`,
      references: { role: `jk_${request.leaseId}` },
    };
  },
  async revoke() {},
  async health() {
    return { ok: true };
  },
};

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "jitkey-lease-memory-"));
  const redisServer = await startEmbeddedRedis(dir);
  try {
    const issuer = await TestIssuer.create("ci");
    const config = parseConfig({
      redis: { url: redisServer.url, prefix: "jitkey" },
      data: { dir },
      identity: { audience: "jitkey", issuers: [issuer.config()] },
      resources: [
        {
          name: "orders-db",
          adapter: "jwt",
          classification: "internal",
          scopes: ["read", "write"],
          maxTtlSeconds: 3600,
          options: { audience: "replaced by the measured adapter" },
        },
      ],
      policies: [
        {
          agents: ["ci:*"],
          resources: ["orders-db"],
          scopes: ["read", "write"],
          maxClassification: "internal",
          autoApprove: true,
          maxTtlSeconds: 3600,
        },
      ],
      limits: { agentRequestsPerMinute: 1_000_000 },
    });
    const broker = await createBroker(config, {
      logger: createLogger({ level: "error" }),
      adapters: new Map([["orders-db", measuredAdapter]]),
    });
    const redis = connectRedis(redisServer.url);
    const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await redis.info("memory"))?.[1]);
    const before = await usedMemory();
    const tasks: { agent: { kind: "agent"; id: string; issuer: string }; id: string }[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async (_, worker) => {
        const agent = {
          kind: "agent",
          id: `ci:agent-${worker}-${randomBytes(3).toString("hex")}`,
          issuer: "ci",
        } as const;
        while (next < LEASES / LEASES_PER_TASK) {
          next += 1;
          const task = await broker.tasks.create(agent, {
            goal: "Summarise last quarter's orders for the finance report",
            resources: [{ resource: "orders-db", scopes: ["read"] }],
            ttlSeconds: 3600,
          });
          tasks.push({ agent, id: task.id });
          for (let i = 0; i < LEASES_PER_TASK; i++)
            await broker.leases.mint(agent, task.id, { resource: "orders-db", ttlSeconds: 1800 });
        }
      }),
    );
    const live = await usedMemory();
    const perLive = (live - before) / LEASES;
    // Then every task completes and every lease is revoked: what stays for the retention period.
    await broker.startWorkers({ concurrency: 16 });
    for (const task of tasks) await broker.tasks.complete(task.id, task.agent);
    const liveLeases = async () =>
      (await Promise.all(broker.keys.shards.map((shard) => redis.zcard(shard.revokingLeases)))).reduce(
        (sum, n) => sum + n,
        0,
      );
    while ((await liveLeases()) > 0) await new Promise((resolve) => setTimeout(resolve, 200));
    await broker.sealer.sealAll();
    const revoked = await usedMemory();
    const perRevoked = (revoked - before) / LEASES;
    const gib = (bytes: number) => ((bytes * 1e6) / 2 ** 30).toFixed(2);
    process.stdout.write(
      `${LEASES} leases, ${LEASES_PER_TASK} a task, ${config.redis.shards} shards (used_memory deltas):\n` +
        `  live:    ${Math.round(perLive)} bytes a lease (record, indexes, handle, audit, task share); 1M ≈ ${gib(perLive)} GiB\n` +
        `  revoked: ${Math.round(perRevoked)} bytes a lease kept until retention ends; 1M ≈ ${gib(perRevoked)} GiB\n`,
    );
    redis.disconnect();
    await broker.close();
  } finally {
    await redisServer.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
