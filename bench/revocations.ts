import { setTimeout as sleep } from "node:timers/promises";
import { call, pool } from "./client.ts";
import type { System } from "./systems.ts";

/** A lease as `GET /v1/leases/:id` shows it, the fields the benchmark reads. */
export interface LeaseRecord {
  id: string;
  status: string;
  expiresAt: string;
  revokedAt?: string;
  revokeRequestedAt?: string;
}

/** The sum of a metric's samples on the API process's `/metrics`; undefined if it is not there. */
async function metric(target: System, name: string): Promise<number | undefined> {
  const res = await fetch(`${target.url}/metrics`).catch(() => undefined);
  if (!res?.ok) return undefined;
  const samples = [...(await res.text()).matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))];
  return samples.length > 0 ? samples.reduce((sum, sample) => sum + Number(sample[1]), 0) : undefined;
}

/** `jitkey_live_leases`: leases not yet revoked, all processes together (it counts in Redis). */
export function liveLeaseGauge(target: System): Promise<number | undefined> {
  return metric(target, "jitkey_live_leases");
}

/** `jitkey_leases_minted_total` of the API process, over every resource. */
export function mintedCounter(target: System): Promise<number | undefined> {
  return metric(target, "jitkey_leases_minted_total");
}

/**
 * Waits until the live-lease gauge is at most `target`, polling every 100 ms, so that the
 * per-lease reads below do not compete with the revocations they measure. Returns false on
 * timeout or when the broker has no such gauge.
 */
export async function waitForGauge(target: System, atMost: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const live = await liveLeaseGauge(target);
    if (live === undefined) return false;
    if (live <= atMost) return true;
    await sleep(100);
  }
  return false;
}

/**
 * Reads every lease through `GET /v1/leases/:id` (operator) until all are `revoked` or
 * `timeoutMs` passes; returns the last record read of each.
 */
export async function readUntilRevoked(
  target: System,
  operatorToken: string,
  ids: string[],
  timeoutMs: number,
): Promise<Map<string, LeaseRecord>> {
  const records = new Map<string, LeaseRecord>();
  let pending = ids;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const read = await pool(pending, 32, async (id) => {
      const answer = await call<{ lease: LeaseRecord }>(`${target.url}/v1/leases/${id}`, {
        token: operatorToken,
      });
      if (answer.status !== 200) throw new Error(`GET /v1/leases/${id}: ${answer.status}`);
      return answer.body.lease;
    });
    for (const lease of read) records.set(lease.id, lease);
    pending = read.filter((lease) => lease.status !== "revoked").map((lease) => lease.id);
    if (pending.length === 0 || Date.now() > deadline) return records;
    await sleep(500);
  }
}
