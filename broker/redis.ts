import { type ChainableCommander, Redis, type RedisOptions } from "ioredis";
import { DEFAULT_TENANT } from "./ids.ts";

/**
 * Opens a client. `forQueues` clients never give up on a command (BullMQ needs that); the
 * HTTP layer keeps requests that wait on them from hanging (see `broker/http/redis-health.ts`).
 * API clients fail a command after 1 s or a short retry, so a Redis
 * outage — refused, dropped or hung — answers fast. Never run a blocking command (BLPOP,
 * XREAD BLOCK) on an API client: use `duplicate()` without the timeout.
 */
export function connectRedis(url: string, options: { forQueues?: boolean; name?: string } = {}): Redis {
  const base: RedisOptions = {
    connectionName: options.name,
    enableReadyCheck: true,
    maxRetriesPerRequest: options.forQueues ? null : 2,
    // Reconnect forever, at most every 2 s: the broker recovers by itself when Redis returns.
    retryStrategy: (attempt) => Math.min(attempt * 200, 2000),
    ...(options.forQueues ? {} : { commandTimeout: 1000 }),
  };
  return new Redis(url, base);
}

/**
 * Every Redis key the broker uses, in one place. Keys carry the tenant from the start, and
 * the keys of one record share a hash slot (`{id}`), so Redis Cluster can hold them.
 */
export class RedisKeys {
  readonly base: string;
  constructor(
    readonly prefix: string,
    readonly tenant: string = DEFAULT_TENANT,
  ) {
    this.base = `${prefix}:${tenant}`;
  }
  task(id: string): string {
    return `${this.base}:task:{${id}}`;
  }
  taskLeases(taskId: string): string {
    return `${this.base}:task:{${taskId}}:leases`;
  }
  lease(id: string): string {
    return `${this.base}:lease:{${id}}`;
  }
  agentLeases(agentId: string): string {
    return `${this.base}:agent-leases:${agentId}`;
  }
  agentTasks(agentId: string): string {
    return `${this.base}:agent-tasks:${agentId}`;
  }
  resourceLeases(resource: string): string {
    return `${this.base}:resource-leases:${resource}`;
  }
  /** Handle → lease id, for leases not yet revoked (orphan sweeps ask it). */
  resourceHandles(resource: string): string {
    return `${this.base}:resource-handles:${resource}`;
  }
  /** Tasks by creation time. */
  get allTasks(): string {
    return `${this.base}:tasks:all`;
  }
  /** Pending tasks by creation time. */
  get pendingTasks(): string {
    return `${this.base}:tasks:pending`;
  }
  /** Pending and approved tasks by expiry. */
  get liveTasks(): string {
    return `${this.base}:tasks:live`;
  }
  /** Leases by issue time. */
  get allLeases(): string {
    return `${this.base}:leases:all`;
  }
  /** Leases not yet revoked (issuing, active, revoking) by expiry. */
  get liveLeases(): string {
    return `${this.base}:leases:live`;
  }
  /** `revoke_failed` leases by failure time. */
  get failedLeases(): string {
    return `${this.base}:leases:failed`;
  }
  /** The append-only audit stream, and per-entity streams that index it. */
  auditStream(index?: { kind: "task" | "agent" | "lease"; id: string }): string {
    return index ? `${this.base}:audit:${index.kind}:${index.id}` : `${this.base}:audit`;
  }
  rateLimit(bucket: string, window: number): string {
    return `${this.base}:rate:${bucket}:${window}`;
  }
  /** A named cross-process lock (adapters' read-modify-write of one backend object). */
  lock(name: string): string {
    return `${this.base}:lock:${name}`;
  }
  revocation(id: string): string {
    return `${this.base}:revocation:{${id}}`;
  }
  /** BullMQ's key prefix; hash-tagged so one queue's keys share a slot. */
  get queuePrefix(): string {
    return `{${this.base}:q}`;
  }
}

/** A record stored as JSON with a `status` that only moves by compare-and-set. */
export interface StatusRecord {
  readonly id: string;
  readonly status: string;
}

// Compare-and-set on one key: apply the patch only when the status is one of those allowed and
// every expected field (ARGV[3]) still holds its value.
// One key per script keeps it valid on Redis Cluster.
const TRANSITION_SCRIPT = `
local raw = redis.call('GET', KEYS[1])
if not raw then return {0} end
local record = cjson.decode(raw)
local allowed = cjson.decode(ARGV[1])
local matched = false
for _, status in ipairs(allowed) do
  if record.status == status then matched = true end
end
if not matched then return {0, raw} end
for field, value in pairs(cjson.decode(ARGV[3])) do
  if record[field] ~= value then return {0, raw} end
end
for field, value in pairs(cjson.decode(ARGV[2])) do record[field] = value end
local out = cjson.encode(record)
redis.call('SET', KEYS[1], out, 'KEEPTTL')
return {1, out}
`;

/** JSON records with atomic status transitions. */
export class RecordStore<T extends StatusRecord> {
  constructor(
    private readonly redis: Redis,
    private readonly keyOf: (id: string) => string,
  ) {
    // Registered once per client: ioredis then sends EVALSHA and the script body only on a miss.
    if (!("jitkeyTransition" in redis))
      redis.defineCommand("jitkeyTransition", { numberOfKeys: 1, lua: TRANSITION_SCRIPT });
  }

  async get(id: string): Promise<T | undefined> {
    const raw = await this.redis.get(this.keyOf(id));
    return raw ? (JSON.parse(raw) as T) : undefined;
  }

  async getMany(ids: string[]): Promise<T[]> {
    if (ids.length === 0) return [];
    const raws = await this.redis.mget(ids.map((id) => this.keyOf(id)));
    return raws.flatMap((raw) => (raw ? [JSON.parse(raw) as T] : []));
  }

  /** Writes a new record; false when the id is taken. */
  async create(record: T): Promise<boolean> {
    return (await this.redis.set(this.keyOf(record.id), JSON.stringify(record), "NX")) === "OK";
  }

  /** Queues the write of a new record in `multi`, so it lands atomically with its indexes. */
  createIn(multi: ChainableCommander, record: T): ChainableCommander {
    return multi.set(this.keyOf(record.id), JSON.stringify(record), "NX");
  }

  /**
   * Applies `patch` only if the record's status is one of `from` and each field in `expect`
   * still has the given value.
   * Returns the record after the change, or `{ changed: false, record }` as it stands.
   */
  async transition(
    id: string,
    from: readonly string[],
    patch: Partial<T>,
    expect: Partial<T> = {},
  ): Promise<{ changed: boolean; record?: T }> {
    const client = this.redis as Redis & {
      jitkeyTransition(key: string, from: string, patch: string, expect: string): Promise<[number, string?]>;
    };
    const result = await client.jitkeyTransition(
      this.keyOf(id),
      JSON.stringify(from),
      JSON.stringify(patch),
      JSON.stringify(expect),
    );
    const raw = result[1];
    return { changed: result[0] === 1, record: raw ? (JSON.parse(raw) as T) : undefined };
  }

  /** Cancels a retention expiry: the record is live again. */
  async persist(id: string): Promise<void> {
    await this.redis.persist(this.keyOf(id));
  }

  /** Keeps a finished record for `seconds`, then lets Redis drop it. */
  async expireAfter(id: string, seconds: number): Promise<void> {
    await this.redis.expire(this.keyOf(id), Math.ceil(seconds));
  }
}
