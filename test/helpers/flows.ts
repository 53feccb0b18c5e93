import { expect } from "chai";
import type { ManualClock } from "../../broker/clock.ts";
import { DEFAULT_TENANT } from "../../broker/ids.ts";
import type { Lease } from "../../broker/leases/lease.ts";
import type { TestBroker } from "./broker.ts";
import { eventually } from "./redis.ts";

/** Authorization headers for one agent of a test broker. */
export interface AgentSession {
  agentId: string;
  headers: { Authorization: string };
}

/** Signs an identity token for `subject` (agent id `ci:<subject>`) and returns its headers. */
export async function agentSession(t: TestBroker, subject = "agent-worker"): Promise<AgentSession> {
  return { agentId: `ci:${subject}`, headers: { Authorization: `Bearer ${await t.agentToken(subject)}` } };
}

/** The operator's Authorization header. */
export function operatorHeaders(t: TestBroker): { Authorization: string } {
  return { Authorization: `Bearer ${t.operatorToken}` };
}

/** Creates a task through HTTP and returns its id; approves it as the operator unless told not to. */
export async function createTask(
  t: TestBroker,
  agent: AgentSession,
  options: {
    resources?: { resource: string; scopes: string[] }[];
    ttlSeconds?: number;
    approve?: boolean;
  } = {},
): Promise<string> {
  const created = await t.http
    .post("/v1/tasks")
    .set(agent.headers)
    .send({
      goal: "Reconcile the ledger",
      resources: options.resources ?? [{ resource: "records", scopes: ["read", "write"] }],
      ttlSeconds: options.ttlSeconds ?? 600,
    })
    .expect(201);
  const taskId = created.body.task.id as string;
  if (options.approve !== false && created.body.task.status === "pending")
    await t.http.post(`/v1/tasks/${taskId}/approve`).set(operatorHeaders(t)).send({}).expect(200);
  return taskId;
}

/** Mints a lease through HTTP, expecting 201; returns the lease view and the credential. */
export async function mintLease(
  t: TestBroker,
  agent: AgentSession,
  taskId: string,
  body: { resource?: string; scopes?: string[]; ttlSeconds?: number } = {},
): Promise<{ lease: Lease; credential: Record<string, string> }> {
  const res = await t.http
    .post(`/v1/tasks/${taskId}/leases`)
    .set(agent.headers)
    .send({ resource: "records", ...body })
    .expect(201);
  return { lease: res.body.lease, credential: res.body.credential };
}

/** The audit event written last when a lease settles in a status (after indexes and metrics). */
const SETTLED_EVENT: Partial<Record<Lease["status"], string>> = {
  revoked: "lease_revoked",
  revoke_failed: "lease_revoke_failed",
};

/**
 * Waits until the stored lease has `status` and returns it. For `revoked` and `revoke_failed`
 * it also waits for the audit event the broker writes last, so indexes and metrics are settled.
 */
export async function leaseReaches(
  t: TestBroker,
  leaseId: string,
  status: Lease["status"],
  timeoutMs = 8000,
  /** A manual broker clock to move on while waiting: retries are scheduled on it. */
  clock?: ManualClock,
): Promise<Lease> {
  const settled = SETTLED_EVENT[status];
  return eventually(async () => {
    clock?.advance(100);
    const lease = await t.broker.leaseStore.get(leaseId);
    if (lease?.status !== status) return undefined;
    if (settled && !(await t.broker.audit.query({ leaseId, limit: 1000 })).some((e) => e.type === settled))
      return undefined;
    return lease;
  }, timeoutMs);
}

/** Audit events for a query, oldest first, read through the operator API. */
export async function auditEvents(
  t: TestBroker,
  query: { taskId?: string; leaseId?: string; agentId?: string } = {},
): Promise<Record<string, unknown>[]> {
  const res = await t.http
    .get("/v1/audit")
    .query({ ...query, limit: 1000 })
    .set(operatorHeaders(t))
    .expect(200);
  return res.body.events;
}

/** The one event of `type` in `events`, failing when there is none. */
export function eventOf(events: Record<string, unknown>[], type: string): Record<string, unknown> {
  const event = events.find((e) => e.type === type);
  expect(event, `audit event ${type}`).to.not.equal(undefined);
  return event as Record<string, unknown>;
}

/** The value of one Prometheus sample line, e.g. `jitkey_revoke_failures_total{resource="records"}`; 0 when absent. */
export async function metricValue(t: TestBroker, metric: string, sample: string): Promise<number> {
  const text = await t.broker.metrics.registry.getSingleMetricAsString(metric);
  const line = text.split("\n").find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.slice(sample.length + 1)) : 0;
}

/**
 * Writes what a broker that crashed mid-mint leaves behind: an `issuing` lease record with its
 * indexes, and, when `artifact` is set, what the adapter had already created.
 */
export async function writeStrandedLease(
  t: TestBroker,
  lease: { id: string; taskId: string; agentId: string; issuedAt: number; expiresAt: number },
  options: { artifact?: boolean } = {},
): Promise<void> {
  const shard = t.broker.keys.forId(lease.id);
  const record: Lease = {
    id: lease.id,
    tenant: DEFAULT_TENANT,
    taskId: lease.taskId,
    agentId: lease.agentId,
    resource: "records",
    adapter: t.recording.kind,
    scopes: ["read"],
    issuedAt: new Date(lease.issuedAt).toISOString(),
    expiresAt: new Date(lease.expiresAt).toISOString(),
    status: "issuing",
    revocable: true,
    revocation: "backend",
  };
  const staleMs = t.config.revocation.staleSeconds * 1000;
  const results = await t.redis
    .multi()
    .set(shard.lease(lease.id), JSON.stringify(record), "NX")
    .zadd(shard.taskLeases(lease.taskId), lease.issuedAt, lease.id)
    .zadd(shard.resourceLeases("records"), lease.issuedAt, lease.id)
    .zadd(shard.allLeases, lease.issuedAt, lease.id)
    .zadd(shard.liveLeases, Math.min(lease.expiresAt, lease.issuedAt + staleMs), lease.id)
    .exec();
  expect(results?.[0]?.[1]).to.equal("OK");
  if (options.artifact) await t.redis.set(t.recording.artifactKey(lease.id), JSON.stringify({ secret: "x" }));
}

/** How many leases the due indexes still hold (live, revoking or failed), over every shard. */
export async function leasesInDueIndexes(t: TestBroker): Promise<number> {
  const counts = await Promise.all(
    t.broker.keys.shards.flatMap((shard) => [
      t.redis.zcard(shard.liveLeases),
      t.redis.zcard(shard.revokingLeases),
      t.redis.zcard(shard.failedLeases),
    ]),
  );
  return counts.reduce((sum, n) => sum + n, 0);
}
