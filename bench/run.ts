/**
 * `npm run bench`: jitkey against a deliberately naive reference broker (bench/naive-broker.ts)
 * in the same run, on the benchmark's own redis-server, load from autocannon in a separate
 * process. Prints a table and, on the last line, one JSON object with every figure under flat
 * dotted keys. Exits non-zero only when the benchmark itself fails, never for a missed target.
 *
 *   npm run bench                   full run (about 6 minutes; 1,000,000 seeded leases)
 *   npm run bench -- --quick        under 90 s, smaller counts
 *   options: --skip-build  --keep (keep the run directory and its logs)
 *            --log-level L (jitkey's log.level, default info)  --scale-leases N
 *
 * See docs/performance.md for what each figure means.
 */
import { cpus, loadavg } from "node:os";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { fastest, LoadGenerator, percentile } from "./client.ts";
import { measureFanout } from "./fanout.ts";
import { BenchRun, startRedis, tail } from "./processes.ts";
import { type Figures, judge, renderTable } from "./report.ts";
import { measureScale } from "./scale.ts";
import { auditFootprint, loadBenchConfig } from "./seed.ts";
import { measureStorm } from "./storm.ts";
import { createTasks, prepareConfig, startJitkey, startNaive } from "./systems.ts";
import { measureThroughput, type ThroughputResult } from "./throughput.ts";

const { values: options } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    "skip-build": { type: "boolean", default: false },
    keep: { type: "boolean", default: false },
    "log-level": { type: "string", default: "info" },
    "scale-leases": { type: "string" },
  },
});
const quick = options.quick === true;
const settings = {
  agents: 300,
  connections: 50,
  warmupSeconds: quick ? 1 : 5,
  windowSeconds: quick ? 4 : 20,
  rounds: quick ? 4 : 10,
  memoryLeases: quick ? 2000 : 20_000,
  stormLeases: quick ? 2000 : 10_000,
  stormWindowSeconds: quick ? 2 : 10,
  fanoutLeases: quick ? 1000 : 10_000,
  scaleLeases: Number(options["scale-leases"] ?? (quick ? 5000 : 1_000_000)),
  startupRepeats: quick ? 2 : 3,
  reconcilePasses: 30,
  reconcileWarm: 200,
  reconcileBudgetMs: quick ? 5_000 : 120_000,
  seeders: quick ? 1 : 2,
  timeoutMs: quick ? 30_000 : 180_000,
};

const began = performance.now();
const loadAtStart = loadavg()[0];
const progress = (message: string) =>
  process.stderr.write(
    `[bench ${((performance.now() - began) / 1000).toFixed(1).padStart(6)} s] ${message}\n`,
  );

/** Two decimals are more than any figure here can tell. */
const round = (value: number) => Math.round(value * 100) / 100;

function throughputFigures(prefix: string, result: ThroughputResult): Figures {
  const { mint, introspect, memory } = result;
  return {
    [`${prefix}mint.rps`]: mint.rps,
    [`${prefix}mint.p50_ms`]: mint.p50_ms,
    [`${prefix}mint.p99_ms`]: mint.p99_ms,
    [`${prefix}mint.requests`]: mint.requests,
    [`${prefix}mint.non2xx`]: mint.non2xx + mint.errors,
    [`${prefix}introspect.rps`]: introspect.rps,
    [`${prefix}introspect.p50_ms`]: introspect.p50_ms,
    [`${prefix}introspect.p99_ms`]: introspect.p99_ms,
    [`${prefix}introspect.requests`]: introspect.requests,
    [`${prefix}introspect.non2xx`]: introspect.non2xx + introspect.errors,
    [`${prefix}memory.leases`]: memory.leases,
    [`${prefix}memory.bytes_per_lease`]: memory.bytesPerLease,
    [`${prefix}memory.keys_per_lease`]: memory.keysPerLease,
  };
}

async function main(): Promise<void> {
  const run = await BenchRun.create();
  let stopping = false;
  const interrupt = (signal: string) => {
    if (stopping) return;
    stopping = true;
    progress(`${signal}: stopping every process and removing ${run.dir}`);
    void run.close(options.keep === true).finally(() => process.exit(130));
  };
  process.on("SIGINT", () => interrupt("SIGINT"));
  process.on("SIGTERM", () => interrupt("SIGTERM"));
  process.on("exit", () => run.killAll());

  try {
    if (!options["skip-build"]) {
      progress("npm run build");
      const build = run.spawn("build", "npm", ["run", "build"]);
      if ((await build.exited) !== 0) throw new Error(`npm run build failed:\n${await tail(build.logFile)}`);
    }
    const redis = await startRedis(run);
    const { file: configFile, identity } = await prepareConfig(
      run,
      redis.url,
      settings.agents,
      options["log-level"] as string,
    );
    const config = await loadBenchConfig(configFile);
    const load = LoadGenerator.start(run);
    const throughputSettings = {
      connections: settings.connections,
      warmupSeconds: settings.warmupSeconds,
      windowSeconds: settings.windowSeconds,
      rounds: settings.rounds,
      memoryLeases: settings.memoryLeases,
    };

    progress("starting the naive broker and jitkey; each agent declares a task on each");
    const naive = await startNaive(run, configFile);
    const jitkey = await startJitkey(run, configFile);
    const tasks = await createTasks(jitkey, identity);
    progress(`mint, then introspect: ${settings.rounds} interleaved windows each, then memory`);
    const [naiveResult, jitkeyResult] = (await measureThroughput(
      [
        { system: naive, taskIds: await createTasks(naive, identity) },
        {
          system: jitkey,
          taskIds: tasks,
          auditProbe: () => auditFootprint(redis.client, config),
        },
      ],
      load,
      redis,
      identity,
      throughputSettings,
    )) as [ThroughputResult, ThroughputResult];
    await naive.stop();
    progress(`jitkey: expiry storm of ${settings.stormLeases.toLocaleString("en")} leases`);
    const storm = await measureStorm(jitkey, load, identity, tasks, jitkeyResult.mint.rps, {
      leases: settings.stormLeases,
      connections: settings.connections,
      windowSeconds: settings.stormWindowSeconds,
      timeoutMs: settings.timeoutMs,
    });
    progress(`jitkey: completing a task with ${settings.fanoutLeases.toLocaleString("en")} live leases`);
    const fanout = await measureFanout(jitkey, identity, {
      leases: settings.fanoutLeases,
      connections: settings.connections,
      probes: 10,
      timeoutMs: settings.timeoutMs,
    });
    await jitkey.stop();
    load.stop();

    const scale = await measureScale(
      run,
      redis,
      configFile,
      { ...settings, leases: settings.scaleLeases },
      progress,
    );

    const reconcileEmpty = fastest(scale.reconcileEmptyMs);
    const reconcileFull = fastest(scale.reconcileFullMs);
    const reconcileWarmEmpty = fastest(scale.reconcileWarmEmptyMs);
    const reconcileWarmFull = fastest(scale.reconcileWarmFullMs);
    const startupEmpty = fastest(scale.startupEmptyMs);
    const startupFull = fastest(scale.startupFullMs);
    const m = jitkeyResult.memory;
    const figures: Figures = {
      ...throughputFigures("", jitkeyResult),
      ...throughputFigures("naive.", naiveResult),
      "ratio.mint": jitkeyResult.mint.rps / naiveResult.mint.rps,
      "ratio.mint_p99": jitkeyResult.mint.p99_ms / naiveResult.mint.p99_ms,
      "ratio.introspect": jitkeyResult.introspect.rps / naiveResult.introspect.rps,
      "ratio.memory": m.bytesPerLease / naiveResult.memory.bytesPerLease,
      "memory.bytes_per_lease_with_audit": m.bytesPerLeaseAll,
      "memory.bytes_per_audit_event": m.bytesPerAuditEvent ?? null,
      "memory.audit_events_per_lease": m.auditEvents !== undefined ? m.auditEvents / m.leases : null,
      "storm.leases": storm.leases,
      "storm.same_second": storm.sameSecond,
      "storm.lag_p50_ms": storm.lagP50Ms,
      "storm.lag_p99_ms": storm.lagP99Ms,
      "storm.lag_max_ms": storm.lagMaxMs,
      "storm.not_revoked": storm.notRevoked,
      "storm.load_rps": storm.loadRate,
      "storm.mint_p99_ms": storm.during.p99_ms,
      "storm.baseline_mint_p99_ms": storm.baseline.p99_ms,
      "storm.mint_late_ms": storm.mintLateMs,
      "ratio.storm_mint_p99": storm.during.p99_ms / storm.baseline.p99_ms,
      "fanout.leases": fanout.leases,
      "fanout.inactive_ms": fanout.inactiveMs,
      "fanout.revoked_ms": fanout.revokedMs,
      "fanout.complete_ms": fanout.completeMs,
      "fanout.not_revoked": fanout.notRevoked,
      "fanout.still_active": fanout.stillActive,
      "reconcile.ms_empty": reconcileEmpty,
      "reconcile.ms_full": reconcileFull,
      "reconcile.passes_full": scale.reconcileFullMs.length,
      "reconcile.runs_empty_ms": scale.reconcileEmptyMs.map(round),
      "reconcile.runs_full_ms": scale.reconcileFullMs.map(round),
      "ratio.reconcile": reconcileFull / reconcileEmpty,
      "reconcile.warm_ms_empty": reconcileWarmEmpty,
      "reconcile.warm_ms_full": reconcileWarmFull,
      "reconcile.warm_p50_ms_empty": percentile(scale.reconcileWarmEmptyMs, 50),
      "reconcile.warm_p50_ms_full": percentile(scale.reconcileWarmFullMs, 50),
      "ratio.reconcile_warm": reconcileWarmFull / reconcileWarmEmpty,
      "startup.ready_ms_empty": startupEmpty,
      "startup.ready_ms_full": startupFull,
      "startup.leases": scale.leases,
      "startup.runs_empty_ms": scale.startupEmptyMs.map(round),
      "startup.runs_full_ms": scale.startupFullMs.map(round),
      "ratio.startup": startupFull / startupEmpty,
      "seed.seconds": scale.seedSeconds,
      "seed.bytes_per_lease": scale.seedBytesPerLease,
      "answers.non2xx":
        jitkeyResult.mint.non2xx +
        jitkeyResult.mint.errors +
        jitkeyResult.introspect.non2xx +
        jitkeyResult.introspect.errors +
        m.non2xx +
        storm.baseline.non2xx +
        storm.baseline.errors +
        storm.during.non2xx +
        storm.during.errors +
        fanout.non2xx,
      "naive.answers.non2xx":
        naiveResult.mint.non2xx +
        naiveResult.mint.errors +
        naiveResult.introspect.non2xx +
        naiveResult.introspect.errors +
        naiveResult.memory.non2xx,
    };
    const targets = judge(figures);
    const missed = targets.filter((t) => !t.met).map((t) => t.id);
    Object.assign(figures, {
      "run.quick": quick,
      "run.seconds": (performance.now() - began) / 1000,
      "run.node": process.version,
      "run.cpus": cpus().length,
      // Other work on the machine moves every absolute figure: the 1-minute load average says how much.
      "run.loadavg_start": loadAtStart ?? null,
      "run.loadavg_end": loadavg()[0] ?? null,
      "run.connections": settings.connections,
      "run.window_s": settings.windowSeconds,
      "run.rounds": settings.rounds,
      "targets.met": targets.length - missed.length,
      "targets.missed": missed,
    });
    for (const [key, value] of Object.entries(figures))
      if (typeof value === "number") figures[key] = Number.isFinite(value) ? round(value) : null;

    process.stdout.write(`\n${renderTable(figures, targets)}\n\n`);
    process.stdout.write(
      missed.length > 0
        ? `targets missed (${missed.length} of ${targets.length}): ${missed.join(", ")}\n`
        : "every target met\n",
    );
    process.stdout.write(
      `load average (1 min) at start ${loadAtStart?.toFixed(1)}, at end ${loadavg()[0]?.toFixed(1)} on ${cpus().length} cores\n`,
    );
    process.stdout.write(`${JSON.stringify(figures)}\n`);
  } finally {
    await run.close(options.keep === true);
    if (options.keep) progress(`kept ${run.dir} (config and every process's log)`);
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`bench failed: ${(error as Error).stack ?? error}\n`);
    process.exit(1);
  },
);
