import { performance } from "node:perf_hooks";
import { call, expectCall, pool } from "./client.ts";
import { liveLeaseGauge, readUntilRevoked, waitForGauge } from "./revocations.ts";
import { type BenchIdentity, mint, RESOURCE, type System } from "./systems.ts";
import { LOAD_TTL_SECONDS } from "./throughput.ts";

export interface FanoutSettings {
  /** Live leases of the one task that is completed. */
  leases: number;
  connections: number;
  /** Credentials introspected in a tight loop from the moment of completion. */
  probes: number;
  timeoutMs: number;
}

export interface FanoutResult {
  leases: number;
  /** From sending `complete` until every probed credential introspects inactive. */
  inactiveMs: number;
  /** From sending `complete` until the last lease's `revokedAt` (from its record). */
  revokedMs: number;
  /** How long `POST /v1/tasks/:id/complete` took to answer. */
  completeMs: number;
  notRevoked: number;
  /** Credentials of the task still introspecting active once everything was revoked. */
  stillActive: number;
  non2xx: number;
}

/** Introspects `token` until it answers inactive; returns when that answer arrived (ms after `from`). */
async function untilInactive(
  target: System,
  operatorToken: string,
  token: string,
  from: number,
  deadline: number,
) {
  while (performance.now() < deadline) {
    const answer = await call<{ active?: boolean }>(`${target.url}/v1/introspect`, {
      token: operatorToken,
      form: { token },
    });
    if (answer.status === 200 && answer.body.active === false) return performance.now() - from;
  }
  return Number.NaN;
}

/**
 * Task fan-out: one task with `leases` live leases is completed; measures how soon its
 * credentials introspect inactive and how soon every lease is `revoked`.
 */
export async function measureFanout(
  target: System,
  identity: BenchIdentity,
  settings: FanoutSettings,
): Promise<FanoutResult> {
  const agentToken = identity.agentTokens[0] as string;
  const { task } = await expectCall<{ task: { id: string } }>(201, `${target.url}/v1/tasks`, {
    token: agentToken,
    json: { goal: "benchmark fan-out", resources: [{ resource: RESOURCE, scopes: ["read"] }] },
  });
  const leases = await pool(
    Array.from({ length: settings.leases }, (_, i) => i),
    settings.connections,
    () => mint(target, agentToken, task.id, LOAD_TTL_SECONDS),
  );
  const step = Math.max(1, Math.floor(leases.length / settings.probes));
  const probes = leases.filter((_, i) => i % step === 0).slice(0, settings.probes);
  const gaugeBefore = await liveLeaseGauge(target);

  const startedWall = Date.now();
  const started = performance.now();
  const deadline = started + settings.timeoutMs;
  const completing = call<{ revoking?: number }>(`${target.url}/v1/tasks/${task.id}/complete`, {
    method: "POST",
    token: agentToken,
  }).then((answer) => ({ answer, ms: performance.now() - started }));
  const inactive = await Promise.all(
    probes.map((lease) => untilInactive(target, identity.operatorToken, lease.token, started, deadline)),
  );
  const completed = await completing;
  let non2xx = completed.answer.status === 200 ? 0 : 1;

  if (gaugeBefore !== undefined)
    await waitForGauge(target, gaugeBefore - settings.leases, Math.max(0, deadline - performance.now()));
  const records = await readUntilRevoked(
    target,
    identity.operatorToken,
    leases.map((lease) => lease.id),
    Math.max(0, deadline - performance.now()),
  );
  let notRevoked = 0;
  let lastRevokedAt = 0;
  for (const lease of records.values()) {
    if (lease.status !== "revoked" || !lease.revokedAt) notRevoked += 1;
    else lastRevokedAt = Math.max(lastRevokedAt, Date.parse(lease.revokedAt));
  }
  const answers = await pool(leases, settings.connections, (lease) =>
    call<{ active?: boolean }>(`${target.url}/v1/introspect`, {
      token: identity.operatorToken,
      form: { token: lease.token },
    }),
  );
  non2xx += answers.filter((answer) => answer.status !== 200).length;
  return {
    leases: leases.length,
    inactiveMs: inactive.some(Number.isNaN) ? Number.NaN : Math.max(...inactive),
    revokedMs: notRevoked > 0 ? Number.NaN : lastRevokedAt - startedWall,
    completeMs: completed.ms,
    notRevoked,
    stillActive: answers.filter((answer) => answer.body?.active === true).length,
    non2xx,
  };
}
