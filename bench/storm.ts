import { setTimeout as sleep } from "node:timers/promises";
import { type LoadGenerator, percentile, pool } from "./client.ts";
import type { LoadResult } from "./load.ts";
import { liveLeaseGauge, mintedCounter, readUntilRevoked, waitForGauge } from "./revocations.ts";
import { type BenchIdentity, type Minted, mint, type System } from "./systems.ts";
import { LOAD_TTL_SECONDS, mintRequests } from "./throughput.ts";

export interface StormSettings {
  /** Leases that expire in the same second. */
  leases: number;
  connections: number;
  /** Length of each mint-load window (without the storm, then across it). */
  windowSeconds: number;
  /** How long to wait for every storm lease to be revoked. */
  timeoutMs: number;
}

export interface StormResult {
  leases: number;
  /** Storm leases whose `expiresAt` is the chosen second (the rest are one second off). */
  sameSecond: number;
  /** `revokedAt − expiresAt` of each storm lease, from its record. */
  lagP50Ms: number;
  lagP99Ms: number;
  lagMaxMs: number;
  notRevoked: number;
  /** Requests per second of the mint load, the same in both windows. */
  loadRate: number;
  baseline: LoadResult;
  during: LoadResult;
  /** How late the last storm mint finished relative to the planned start of the load (ms, ≤ 0 is on time). */
  mintLateMs: number;
}

/** Mints per second the benchmark's own client can send, at most, when planning the storm. */
const MINT_CLIENT_RPS = 1000;

/** Sends only in the first 700 ms of a wall-clock second, so a lease's expiry lands where asked. */
async function earlyInSecond(): Promise<number> {
  for (;;) {
    const now = Date.now();
    if (now % 1000 < 700) return now;
    await sleep(1000 - (now % 1000));
  }
}

/**
 * Expiry storm: `leases` leases minted to expire in one second E, then a mint load at a
 * fixed rate (half the measured mint capacity) once without the storm and once from E − 1 s,
 * and each storm lease's revoke lag read from its own record.
 */
export async function measureStorm(
  target: System,
  load: LoadGenerator,
  identity: BenchIdentity,
  taskIds: string[],
  mintRps: number,
  settings: StormSettings,
): Promise<StormResult> {
  const loadRate = Math.max(50, Math.round(mintRps * 0.5));
  const loadSpec = {
    url: target.url,
    connections: settings.connections,
    requests: mintRequests(identity, taskIds, LOAD_TTL_SECONDS),
    overallRate: loadRate,
    durationSeconds: settings.windowSeconds,
  };
  const baseline = await load.run(loadSpec);

  // The broker floors `now + ttl` to whole seconds. A request sent in the first 700 ms of a
  // second with ttl = ceil((E − now) / 1 s) lands in second E unless it waits > 300 ms.
  // The benchmark's own client (fetch, sending only 70 % of each second) mints these, and it,
  // not the broker, sets the pace: about 1,000 a second here. Planned for that, or the storm
  // would come short of its leases on a fast broker.
  const expectedMintMs = (settings.leases / Math.max(1, Math.min(mintRps, MINT_CLIENT_RPS) * 0.6)) * 1000;
  const stormAt = Math.ceil((Date.now() + 1.25 * expectedMintMs + 1500) / 1000) * 1000;
  const agents = identity.agentTokens.length;
  const minted = await pool(
    Array.from({ length: settings.leases }, (_, i) => i),
    settings.connections,
    async (i): Promise<Minted | undefined> => {
      const sentAt = await earlyInSecond();
      // Minting slower than estimated: stop short rather than start the load late
      // (`storm.leases` says how many made it).
      if (sentAt > stormAt - 1200) return undefined;
      const ttl = Math.ceil((stormAt - sentAt) / 1000);
      return mint(target, identity.agentTokens[i % agents] as string, taskIds[i % agents] as string, ttl);
    },
  );
  const leases = minted.filter((lease): lease is Minted => lease !== undefined);
  const mintLateMs = Date.now() - (stormAt - 1000);
  const gaugeBefore = await liveLeaseGauge(target);
  const mintedBefore = await mintedCounter(target);

  await sleep(Math.max(0, stormAt - 1000 - Date.now()));
  const during = await load.run(loadSpec);

  // Wait on the gauge first, so reading 10,000 records does not compete with the revocations
  // it measures. The broker's own mint counter says how many leases the load added, including
  // any still in flight when autocannon stopped counting.
  await sleep(500);
  const mintedAfter = await mintedCounter(target);
  if (gaugeBefore !== undefined && mintedBefore !== undefined && mintedAfter !== undefined)
    await waitForGauge(
      target,
      gaugeBefore - leases.length + (mintedAfter - mintedBefore),
      settings.timeoutMs,
    );
  const records = await readUntilRevoked(
    target,
    identity.operatorToken,
    leases.map((lease) => lease.id),
    settings.timeoutMs,
  );
  const lags: number[] = [];
  let notRevoked = 0;
  for (const lease of records.values()) {
    if (lease.status !== "revoked" || !lease.revokedAt) notRevoked += 1;
    else lags.push(Date.parse(lease.revokedAt) - Date.parse(lease.expiresAt));
  }
  return {
    leases: leases.length,
    sameSecond: leases.filter((lease) => Date.parse(lease.expiresAt) === stormAt).length,
    lagP50Ms: percentile(lags, 50),
    lagP99Ms: percentile(lags, 99),
    lagMaxMs: percentile(lags, 100),
    notRevoked,
    loadRate,
    baseline,
    during,
    mintLateMs,
  };
}
