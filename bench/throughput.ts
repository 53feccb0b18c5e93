import { setTimeout as sleep } from "node:timers/promises";
import { call, type LoadGenerator, pool } from "./client.ts";
import type { LoadRequest, LoadResult } from "./load.ts";
import type { BenchRedis } from "./processes.ts";
import { type BenchIdentity, mint, RESOURCE, type System } from "./systems.ts";

/** Lease lifetime of load mints: nothing they create expires during a run. */
export const LOAD_TTL_SECONDS = 3600;

export interface ThroughputSettings {
  connections: number;
  warmupSeconds: number;
  /** Measured seconds per broker and path, split into `rounds` interleaved windows. */
  windowSeconds: number;
  rounds: number;
  /** Leases minted between the two `INFO memory` readings. */
  memoryLeases: number;
}

/** Redis bytes per live lease, from `INFO memory` before and after minting `leases`. */
export interface MemoryResult {
  leases: number;
  /** used_memory delta per lease, audit keys left out (jitkey) — the figure the target is about. */
  bytesPerLease: number;
  /** used_memory delta per lease, everything included. */
  bytesPerLeaseAll: number;
  /** New keys per lease (DBSIZE delta), audit keys included. */
  keysPerLease: number;
  /** Audit bytes per stored audit event; undefined for a broker without audit. */
  bytesPerAuditEvent?: number;
  auditEvents?: number;
  /** Any mint of the memory run that did not answer 2xx. */
  non2xx: number;
}

export interface ThroughputResult {
  mint: LoadResult;
  introspect: LoadResult;
  memory: MemoryResult;
}

/** One broker of the comparison, with what the load needs to drive it. */
export interface Contender {
  system: System;
  taskIds: string[];
  /** Only jitkey keeps audit: how to tell its bytes apart (bench/seed.ts). */
  auditProbe?: AuditProbe;
}

/** Where a broker keeps audit, and how much: only jitkey has one (see bench/seed.ts). */
export type AuditProbe = () => Promise<{ bytes: number; events: number }>;

/** Mint requests cycling over every agent and its own task. */
export function mintRequests(identity: BenchIdentity, taskIds: string[], ttlSeconds: number): LoadRequest[] {
  return identity.agentTokens.map((token, i) => ({
    method: "POST",
    path: `/v1/tasks/${taskIds[i]}/leases`,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ resource: RESOURCE, ttlSeconds }),
  }));
}

/** Introspection requests (operator bearer) cycling over `tokens`. */
export function introspectRequests(identity: BenchIdentity, tokens: string[]): LoadRequest[] {
  return tokens.map((token) => ({
    method: "POST",
    path: "/v1/introspect",
    headers: {
      authorization: `Bearer ${identity.operatorToken}`,
      "content-type": "application/x-www-form-urlencoded",
    },
    body: new URLSearchParams({ token }).toString(),
  }));
}

/**
 * Runs one path's load against every contender: a warm-up each, then `rounds` measured
 * windows in ABBA order (A B, B A, A B, ...) so that a change in the machine's background
 * load during the run falls on both brokers alike. Each broker's windows add up to one
 * result (autocannon merges their latency histograms).
 */
async function interleaved(
  load: LoadGenerator,
  contenders: Contender[],
  settings: ThroughputSettings,
  path: string,
  requestsOf: (contender: Contender) => LoadRequest[],
): Promise<LoadResult[]> {
  const results = new Array<LoadResult>(contenders.length);
  const spec = (contender: Contender) => ({
    url: contender.system.url,
    connections: settings.connections,
    requests: requestsOf(contender),
  });
  for (const contender of contenders)
    await load.run({ ...spec(contender), amount: undefined, durationSeconds: settings.warmupSeconds });
  const order = contenders.map((_, i) => i);
  for (let round = 0; round < settings.rounds; round++) {
    for (const i of round % 2 === 0 ? order : [...order].reverse()) {
      const contender = contenders[i] as Contender;
      // Answers still in flight when a window closes must not spill into the next broker's window.
      await sleep(250);
      results[i] = await load.run({
        ...spec(contender),
        durationSeconds: settings.windowSeconds / settings.rounds,
        series: `${contender.system.name} ${path}`,
      });
    }
  }
  return results;
}

/**
 * Mint throughput, introspection throughput and Redis bytes per lease of each contender,
 * with the same autocannon settings for all. The brokers run side by side but only one is
 * under load at any moment.
 */
export async function measureThroughput(
  contenders: Contender[],
  load: LoadGenerator,
  redis: BenchRedis,
  identity: BenchIdentity,
  settings: ThroughputSettings,
): Promise<ThroughputResult[]> {
  const mints = (contender: Contender) => mintRequests(identity, contender.taskIds, LOAD_TTL_SECONDS);
  const mintResults = await interleaved(load, contenders, settings, "mint", mints);

  // One live credential per agent to introspect; checked once so a broken setup cannot
  // pass for a fast one (every answer must say active: true).
  const credentials = new Map<Contender, string[]>();
  for (const contender of contenders) {
    const { system, taskIds } = contender;
    const minted = await pool(identity.agentTokens, 50, (token, i) =>
      mint(system, token, taskIds[i] as string, LOAD_TTL_SECONDS),
    );
    const probe = await call<{ active?: boolean }>(`${system.url}/v1/introspect`, {
      token: identity.operatorToken,
      form: { token: minted[0]?.token ?? "" },
    });
    if (probe.status !== 200 || probe.body.active !== true)
      throw new Error(
        `${system.name}: introspection of a fresh credential answered ${JSON.stringify(probe)}`,
      );
    credentials.set(
      contender,
      minted.map((m) => m.token),
    );
  }
  const introspectResults = await interleaved(load, contenders, settings, "introspect", (contender) =>
    introspectRequests(identity, credentials.get(contender) ?? []),
  );

  const results: ThroughputResult[] = [];
  for (const [i, contender] of contenders.entries()) {
    results.push({
      mint: mintResults[i] as LoadResult,
      introspect: introspectResults[i] as LoadResult,
      memory: await measureMemory(contender, load, redis, mints(contender), settings),
    });
  }
  return results;
}

async function measureMemory(
  contender: Contender,
  load: LoadGenerator,
  redis: BenchRedis,
  mints: LoadRequest[],
  settings: ThroughputSettings,
): Promise<MemoryResult> {
  const { auditProbe } = contender;
  await sleep(500);
  const before = {
    used: await redis.usedMemory(),
    keys: await redis.client.dbsize(),
    audit: await auditProbe?.(),
  };
  const run = await load.run({
    url: contender.system.url,
    connections: settings.connections,
    requests: mints,
    amount: settings.memoryLeases,
  });
  await sleep(500);
  const after = {
    used: await redis.usedMemory(),
    keys: await redis.client.dbsize(),
    audit: await auditProbe?.(),
  };
  const leases = run.ok;
  const used = after.used - before.used;
  const auditBytes = before.audit && after.audit ? after.audit.bytes - before.audit.bytes : 0;
  const auditEvents = before.audit && after.audit ? after.audit.events - before.audit.events : undefined;
  return {
    leases,
    bytesPerLease: (used - auditBytes) / leases,
    bytesPerLeaseAll: used / leases,
    keysPerLease: (after.keys - before.keys) / leases,
    ...(auditEvents !== undefined
      ? { auditEvents, bytesPerAuditEvent: auditEvents > 0 ? auditBytes / auditEvents : Number.NaN }
      : {}),
    non2xx: run.non2xx + run.errors,
  };
}
