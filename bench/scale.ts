import { performance } from "node:perf_hooks";
import type { BenchRedis, BenchRun } from "./processes.ts";
import type { PassTimes } from "./seed.ts";
import { startJitkey } from "./systems.ts";

export interface ScaleSettings {
  /** Live leases seeded for the "full" figures. */
  leases: number;
  startupRepeats: number;
  reconcilePasses: number;
  /** Further passes untimed, then as many timed: the figures of a warmed-up process. */
  reconcileWarm: number;
  /** Stop timing further reconciler passes once this much time is spent (the first always runs). */
  reconcileBudgetMs: number;
  /** Seeding processes run side by side. */
  seeders: number;
}

export interface ScaleResult {
  leases: number;
  startupEmptyMs: number[];
  startupFullMs: number[];
  reconcileEmptyMs: number[];
  reconcileFullMs: number[];
  reconcileWarmEmptyMs: number[];
  reconcileWarmFullMs: number[];
  seedSeconds: number;
  /** used_memory after seeding, per seeded lease (audit included). */
  seedBytesPerLease: number;
}

const SEED = ["--import", "tsx", "bench/seed.ts"];

async function startups(run: BenchRun, configFile: string, repeats: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const system = await startJitkey(run, configFile);
    times.push(system.readyMs);
    await system.stop();
  }
  return times;
}

async function reconcilerPasses(
  run: BenchRun,
  configFile: string,
  settings: ScaleSettings,
): Promise<PassTimes> {
  return await run.runJson<PassTimes>("reconcile", process.execPath, [
    ...SEED,
    "reconcile",
    configFile,
    String(settings.reconcilePasses),
    String(settings.reconcileBudgetMs),
    String(settings.reconcileWarm),
  ]);
}

/**
 * Cost flat in live leases: jitkey start-up (spawn of `serve` + `worker` to `/readyz` 200)
 * and one reconciler pass, first on an empty Redis, then with `leases` live leases seeded
 * through the broker's own code (bench/seed.ts). Expects no broker running and empties the
 * benchmark's own Redis first.
 */
export async function measureScale(
  run: BenchRun,
  redis: BenchRedis,
  configFile: string,
  settings: ScaleSettings,
  progress: (message: string) => void,
): Promise<ScaleResult> {
  await redis.client.flushall();
  progress("start-up and reconciler pass with 0 live leases");
  const startupEmptyMs = await startups(run, configFile, settings.startupRepeats);
  const empty = await reconcilerPasses(run, configFile, settings);

  progress(`seeding ${settings.leases.toLocaleString("en")} live leases (${settings.seeders} processes)`);
  const usedBefore = await redis.usedMemory();
  const started = performance.now();
  const share = Math.ceil(settings.leases / settings.seeders);
  await Promise.all(
    Array.from({ length: settings.seeders }, (_, i) =>
      run.runJson("seed", process.execPath, [
        ...SEED,
        "seed",
        configFile,
        String(Math.min(share, settings.leases - i * share)),
        String(i),
        String(settings.seeders),
      ]),
    ),
  );
  const seedSeconds = (performance.now() - started) / 1000;
  const seedBytesPerLease = ((await redis.usedMemory()) - usedBefore) / settings.leases;

  progress(`start-up and reconciler pass with ${settings.leases.toLocaleString("en")} live leases`);
  const startupFullMs = await startups(run, configFile, settings.startupRepeats);
  const full = await reconcilerPasses(run, configFile, settings);
  return {
    leases: settings.leases,
    startupEmptyMs,
    startupFullMs,
    reconcileEmptyMs: empty.times,
    reconcileFullMs: full.times,
    reconcileWarmEmptyMs: empty.warmTimes,
    reconcileWarmFullMs: full.warmTimes,
    seedSeconds,
    seedBytesPerLease,
  };
}
