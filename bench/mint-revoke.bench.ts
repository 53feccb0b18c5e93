/**
 * Benchmark: mint → complete → revoke through the HTTP API on one broker process and the
 * local Redis. Reports mint throughput and latency, revoke lag and memory. Loopback only,
 * bounded in count; run with `npm run bench` (BENCH_TASKS, BENCH_CONCURRENCY to change size).
 */
import { randomBytes } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Redis } from "ioredis";
import { createApp } from "../broker/app.ts";
import { createBroker } from "../broker/broker.ts";
import { parseConfig } from "../broker/config.ts";
import { createLogger } from "../broker/logger.ts";
import { sha256Hex } from "../broker/operators/principal-tokens.ts";
import { TestIssuer } from "../test/helpers/identity.ts";

const TASKS = Number(process.env.BENCH_TASKS ?? 2000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0";

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function main(): Promise<void> {
  const issuer = await TestIssuer.create("bench");
  const operatorToken = randomBytes(16).toString("hex");
  const prefix = `jkbench-${randomBytes(4).toString("hex")}`;
  const config = parseConfig({
    redis: { url: REDIS_URL, prefix },
    data: { dir: await mkdtemp(join(tmpdir(), "jitkey-bench-")) },
    identity: { audience: "jitkey", issuers: [issuer.config()] },
    operators: [{ name: "bench", tokenSha256: sha256Hex(operatorToken) }],
    resources: [
      {
        name: "api",
        adapter: "jwt",
        classification: "internal",
        scopes: ["read"],
        maxTtlSeconds: 600,
        options: { audience: "api" },
      },
    ],
    policies: [
      {
        agents: ["bench:*"],
        resources: ["api"],
        scopes: ["read"],
        maxClassification: "internal",
        autoApprove: true,
        maxTtlSeconds: 600,
      },
    ],
    limits: { agentRequestsPerMinute: 1_000_000 },
  });
  const broker = await createBroker(config, { logger: createLogger({ level: "error" }) });
  await broker.startWorkers({ concurrency: 16 });
  const server = createApp(broker).listen(0, "127.0.0.1");
  await new Promise((r) => server.once("listening", r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const tokens = await Promise.all(Array.from({ length: CONCURRENCY }, (_, i) => issuer.token(`agent-${i}`)));

  const post = async (path: string, token: string, body?: unknown) => {
    const res = await fetch(`${base}${path}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
    return res.json() as Promise<Record<string, { id: string }>>;
  };

  const mintMs: number[] = [];
  let next = 0;
  const rssBefore = process.memoryUsage().rss;
  const started = performance.now();
  await Promise.all(
    tokens.map(async (token) => {
      while (next < TASKS) {
        next += 1;
        const { task } = await post("/v1/tasks", token, {
          goal: "bench",
          resources: [{ resource: "api", scopes: ["read"] }],
        });
        const t0 = performance.now();
        await post(`/v1/tasks/${task?.id}/leases`, token, { resource: "api", ttlSeconds: 300 });
        mintMs.push(performance.now() - t0);
        await post(`/v1/tasks/${task?.id}/complete`, token);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const redis = new Redis(REDIS_URL);
  const drainStart = performance.now();
  const live = async () =>
    (await Promise.all(broker.keys.shards.map((shard) => redis.zcard(shard.liveLeases)))).reduce(
      (a, b) => a + b,
      0,
    );
  while ((await live()) > 0 && performance.now() - drainStart < 60_000) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const lag = await broker.metrics.revokeLag.get();
  const lagSum = lag.values.find((v) => v.metricName === "jitkey_revoke_lag_seconds_sum")?.value ?? 0;
  const lagCount = lag.values.find((v) => v.metricName === "jitkey_revoke_lag_seconds_count")?.value ?? 0;
  mintMs.sort((a, b) => a - b);
  const report = {
    tasks: TASKS,
    concurrency: CONCURRENCY,
    seconds: Number(elapsed.toFixed(2)),
    flowsPerSecond: Number((TASKS / elapsed).toFixed(1)),
    mintMs: {
      p50: Number(percentile(mintMs, 50).toFixed(2)),
      p99: Number(percentile(mintMs, 99).toFixed(2)),
    },
    revokeLagMeanMs: Number(((lagSum / Math.max(1, lagCount)) * 1000).toFixed(1)),
    revoked: lagCount,
    drainSeconds: Number(((performance.now() - drainStart) / 1000).toFixed(2)),
    rssGrowthMiB: Number(((process.memoryUsage().rss - rssBefore) / 2 ** 20).toFixed(1)),
  };
  console.log(JSON.stringify(report, null, 2));
  server.close();
  await broker.close();
  let cursor = "0";
  do {
    const [nextCursor, keys] = await redis.scan(cursor, "MATCH", `*${prefix}*`, "COUNT", 1000);
    cursor = nextCursor;
    if (keys.length > 0) await redis.unlink(...keys);
  } while (cursor !== "0");
  redis.disconnect();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
