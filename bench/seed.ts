/**
 * The benchmark's one window into jitkey's internals. Everything else under bench/ talks to
 * the broker through HTTP, processes and Redis INFO; what cannot be measured that way lives
 * here, so that when the storage format changes this file follows it or stops compiling:
 *
 * - {@link seedLiveLeases} writes live leases through the broker's own `tasks.create` and
 *   `leases.mint` (built in-process with `createBroker`), so seeded leases are stored exactly
 *   as served ones are — records, indexes, expiry jobs and audit events alike — only without
 *   HTTP in front. The `jwt` adapter still signs every credential.
 * - {@link timeReconcilerPasses} times one round of the periodic passes — the due sweeper
 *   (`broker.sweeper.sweepOnce()`) and the reconciler (`broker.reconciler.run()`) — against a
 *   seeded Redis.
 * - {@link auditFootprint} tells audit keys from the rest (every shard's `ShardKeys.audit*`
 *   keys) so the memory figure can report lease bytes and audit bytes apart.
 *
 * Run as a script it is a child process of `bench/run.ts`:
 *   node --import tsx bench/seed.ts seed <config.json> <leases> <worker index> <worker count>
 *   node --import tsx bench/seed.ts reconcile <config.json> <passes> <time budget ms> <warm passes>
 * and prints one JSON line.
 */
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";
import type { Redis } from "ioredis";
import { type Broker, createBroker } from "../broker/broker.ts";
import { type Config, loadConfigFile } from "../broker/config.ts";
import type { AgentPrincipal } from "../broker/identity/principal.ts";
import { createLogger } from "../broker/logger.ts";
import { RedisKeys } from "../broker/redis.ts";

/** How the seeded leases are laid out. */
export interface SeedPlan {
  /** Leases this process writes. */
  leases: number;
  /** Leases per task (tasks are created as needed, one agent per task). */
  leasesPerTask: number;
  /** Lease lifetime: long enough that nothing expires while the scale figures are taken. */
  ttlSeconds: number;
  /** Mints in flight at once. */
  concurrency: number;
  /** Distinguishes the agents of parallel seeding processes. */
  agentPrefix: string;
}

/** Loads the benchmark's config file the way `jitkey serve` does. */
export async function loadBenchConfig(file: string): Promise<Config> {
  const config = await loadConfigFile({ JITKEY_CONFIG: file });
  if (!config) throw new Error(`no config at ${file}`);
  return config;
}

async function openBroker(config: Config): Promise<Broker> {
  const broker = await createBroker(config, { logger: createLogger({ level: "error" }) });
  // Seeding and passes are bulk work: let ioredis batch what many concurrent calls send.
  for (const client of [broker.redis, broker.queueConnection]) client.options.enableAutoPipelining = true;
  return broker;
}

/** Writes `plan.leases` live leases through the broker's own task and mint code. */
export async function seedLiveLeases(config: Config, plan: SeedPlan): Promise<{ seconds: number }> {
  const broker = await openBroker(config);
  const resource = config.resources[0]?.name;
  if (!resource) throw new Error("the bench config names no resource");
  const started = performance.now();
  try {
    const tasks = Math.ceil(plan.leases / plan.leasesPerTask);
    let next = 0;
    const mintOne = async (agent: AgentPrincipal, taskId: string) => {
      await broker.leases.mint(agent, taskId, { resource, ttlSeconds: plan.ttlSeconds });
    };
    const runTask = async (index: number) => {
      const agent: AgentPrincipal = {
        kind: "agent",
        id: `${config.identity.issuers[0]?.name}:${plan.agentPrefix}-${index}`,
        issuer: config.identity.issuers[0]?.name ?? "bench",
      };
      const task = await broker.tasks.create(agent, {
        goal: "bench scale seed",
        resources: [{ resource, scopes: config.resources[0]?.scopes ?? [] }],
        ttlSeconds: config.tasks.maxTtlSeconds,
      });
      if (task.status !== "approved") throw new Error(`seed task ${task.id} is ${task.status}`);
      const count = Math.min(plan.leasesPerTask, plan.leases - index * plan.leasesPerTask);
      for (let i = 0; i < count; i++) await mintOne(agent, task.id);
    };
    // Each lane works through whole tasks; `concurrency` lanes keep that many mints in flight.
    await Promise.all(
      Array.from({ length: Math.min(plan.concurrency, tasks) }, async () => {
        while (next < tasks) {
          const index = next++;
          await runTask(index);
        }
      }),
    );
    return { seconds: (performance.now() - started) / 1000 };
  } finally {
    await broker.close();
  }
}

/** A round of the periodic passes' wall times, in ms. */
export interface PassTimes {
  /** The first rounds of a fresh process, until `budgetMs` is spent. */
  times: number[];
  /** Rounds after as many untimed ones, with V8's optimised code and Redis's data in cache. */
  warmTimes: number[];
}

/**
 * Runs the periodic passes (a due sweep, then a reconciler pass) one after another and times
 * each round: `passes` rounds of a fresh process (stopping early once `budgetMs` is spent),
 * then `warm` rounds untimed and `warm` more timed.
 */
export async function timeReconcilerPasses(
  config: Config,
  passes: number,
  budgetMs: number,
  warm = 0,
): Promise<PassTimes> {
  const broker = await createBroker(config, { logger: createLogger({ level: "error" }) });
  const round = async () => {
    const t0 = performance.now();
    await broker.sweeper.sweepOnce();
    await broker.reconciler.run();
    return performance.now() - t0;
  };
  const times: number[] = [];
  const warmTimes: number[] = [];
  try {
    const started = performance.now();
    for (let i = 0; i < passes && (i === 0 || performance.now() - started < budgetMs); i++)
      times.push(await round());
    for (let i = 0; i < warm; i++) await round();
    for (let i = 0; i < warm; i++) warmTimes.push(await round());
    return { times, warmTimes };
  } finally {
    await broker.close();
  }
}

/** Bytes held by audit keys and the number of audit events stored, as the broker keeps them. */
export async function auditFootprint(
  redis: Redis,
  config: Config,
): Promise<{ bytes: number; events: number }> {
  const keys = new RedisKeys(config.redis.prefix, undefined, config.redis.shards);
  let bytes = 0;
  let events = 0;
  for (const shard of keys.shards) {
    // Every audit key of a shard starts with its stream's name: the stream, its index lists,
    // the seal state and the checkpoints.
    let cursor = "0";
    do {
      const [nextCursor, found] = await redis.scan(cursor, "MATCH", `${shard.audit}*`, "COUNT", 5000);
      cursor = nextCursor;
      if (found.length === 0) continue;
      const pipeline = redis.pipeline();
      for (const key of found) pipeline.call("MEMORY", "USAGE", key, "SAMPLES", "0");
      for (const [error, size] of (await pipeline.exec()) ?? []) if (!error) bytes += Number(size ?? 0);
    } while (cursor !== "0");
    if (await redis.exists(shard.audit)) events += await redis.xlen(shard.audit);
  }
  return { bytes, events };
}

async function main(argv: string[]): Promise<void> {
  const [command, file, ...rest] = argv;
  if (!file) throw new Error("usage: seed.ts seed|reconcile <config.json> ...");
  const config = await loadBenchConfig(file);
  if (command === "seed") {
    const [leases, index, workers] = rest.map(Number);
    const result = await seedLiveLeases(config, {
      leases: leases ?? 0,
      leasesPerTask: 1000,
      ttlSeconds: 7200,
      concurrency: 64,
      agentPrefix: `seed${index ?? 0}of${workers ?? 1}`,
    });
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } else if (command === "reconcile") {
    const [passes, budgetMs, warm] = rest.map(Number);
    const timed = await timeReconcilerPasses(config, passes ?? 3, budgetMs ?? 60_000, warm ?? 0);
    process.stdout.write(`${JSON.stringify(timed)}\n`);
  } else {
    throw new Error(`unknown command ${command}`);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`seed: ${(error as Error).stack ?? error}\n`);
      process.exit(1);
    },
  );
}
