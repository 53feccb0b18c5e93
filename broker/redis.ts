import { type ChainableCommander, Cluster, type ClusterOptions, Redis, type RedisOptions } from "ioredis";
import type { Config } from "./config.ts";
import { DEFAULT_TENANT, shardOfId, shardOfText } from "./ids.ts";

/** Where Redis is and how to log in: the connection part of the `redis` config section. */
export type RedisTarget = Pick<
  Config["redis"],
  "url" | "cluster" | "sentinel" | "username" | "password" | "tls"
>;

interface ConnectOptions {
  /** A BullMQ connection: commands wait for Redis however long it takes. */
  forQueues?: boolean;
  /** The connection name Redis shows in CLIENT LIST. */
  name?: string;
}

/** A client of one Redis (direct or through Sentinel) or of a Redis Cluster. */
export type RedisClient = Redis | Cluster;

/**
 * Opens a client to one Redis (`url`), a master found through Sentinel (`sentinel`) or a
 * Redis Cluster (`cluster`). `forQueues` clients never give up on a command (BullMQ needs
 * that); the HTTP layer keeps requests that wait on them from hanging (see
 * `broker/http/redis-health.ts`). API clients fail a command after 1 s or a short retry, so a
 * Redis outage — refused, dropped or hung — answers fast. Never run a blocking command (BLPOP,
 * XREAD BLOCK) on an API client: use {@link subscriberOf} or a client of its own.
 */
export function connectRedis(url: string, options?: ConnectOptions): Redis;
export function connectRedis(target: RedisTarget, options?: ConnectOptions): RedisClient;
export function connectRedis(target: string | RedisTarget, options: ConnectOptions = {}): RedisClient {
  const { url, cluster, sentinel, username, password, tls } =
    typeof target === "string" ? { url: target } : target;
  const base: RedisOptions = {
    connectionName: options.name,
    enableReadyCheck: true,
    maxRetriesPerRequest: options.forQueues ? null : 2,
    // Reconnect forever, at most every 2 s: the broker recovers by itself when Redis returns.
    retryStrategy: reconnectDelay,
    ...(options.forQueues ? {} : { commandTimeout: 1000 }),
    ...(username === undefined ? {} : { username }),
    ...(password === undefined ? {} : { password }),
  };
  const tlsOptions = tls && {
    ca: tls.caFile,
    cert: tls.certFile,
    key: tls.keyFile,
    servername: tls.servername,
  };
  if (cluster) {
    const nodes = cluster.nodes.map((node) => new URL(node));
    const secure = tlsOptions ?? (nodes[0]?.protocol === "rediss:" ? {} : undefined);
    const clusterOptions: ClusterOptions = {
      redisOptions: { ...base, ...(secure ? { tls: secure } : {}) },
      clusterRetryStrategy: reconnectDelay,
      enableReadyCheck: true,
      // Writes and reads both go to masters: a read right after a write must see it.
      scaleReads: "master",
    };
    return new Cluster(
      nodes.map((node) => ({ host: node.hostname.replace(/^\[|\]$/g, ""), port: Number(node.port || 6379) })),
      clusterOptions,
    );
  }
  if (sentinel) {
    return new Redis({
      ...base,
      sentinels: sentinel.sentinels,
      name: sentinel.name,
      ...(sentinel.db === undefined ? {} : { db: sentinel.db }),
      ...(sentinel.username === undefined ? {} : { sentinelUsername: sentinel.username }),
      ...(sentinel.password === undefined ? {} : { sentinelPassword: sentinel.password }),
      ...(tlsOptions ? { tls: tlsOptions, enableTLSForSentinelMode: true } : {}),
      ...(sentinel.tls && tlsOptions ? { sentinelTLS: tlsOptions } : {}),
      sentinelRetryStrategy: reconnectDelay,
      // Follows a failover as soon as the sentinels announce it, not at the next error.
      failoverDetector: true,
    });
  }
  if (!url) throw new Error("connectRedis: no redis.url, redis.cluster or redis.sentinel");
  // Options given here win over the URL's only where the URL says nothing (ioredis merges so).
  return new Redis(url, { ...base, ...(tlsOptions ? { tls: tlsOptions } : {}) });
}

function reconnectDelay(attempt: number): number {
  return Math.min(attempt * 200, 2000);
}

/** Is any way to reach Redis configured? (None: `jitkey` starts a private redis-server.) */
export function hasRedisTarget(target: RedisTarget): boolean {
  return target.url !== undefined || target.cluster !== undefined || target.sentinel !== undefined;
}

/**
 * A new connection for pub/sub on the same Redis or Cluster as `client`, named `name`. It
 * keeps commands while disconnected (a subscription is re-made on reconnect). On a Cluster,
 * published messages reach every node, so the subscriber listens on any one of them.
 */
export function subscriberOf(client: RedisClient, name: string): RedisClient {
  if (client instanceof Cluster)
    return client.duplicate([], {
      redisOptions: { ...client.options.redisOptions, connectionName: name },
    });
  return client.duplicate({ connectionName: name, enableOfflineQueue: true });
}

/** A reply per command, in order, as a pipeline's `exec` gives them. */
export type CommandReplies = [Error | null, unknown][];

/**
 * Sends `send(target, item)` for every item and returns each command's `[error, reply]`, in
 * order. On a single Redis that is one pipeline (one round trip). On a Cluster the commands go
 * out singly, all at once: while a master is down, ioredis can hold a Cluster pipeline (or a
 * MULTI) seconds past the command timeout, where a single command fails in time, as a 503.
 */
export async function sendEach<I>(
  client: RedisClient,
  items: readonly I[],
  send: (target: RedisClient | ChainableCommander, item: I) => unknown,
): Promise<CommandReplies> {
  if (items.length === 0) return [];
  if (client instanceof Cluster)
    return Promise.all(
      items.map((item) =>
        (send(client, item) as Promise<unknown>).then(
          (reply): [null, unknown] => [null, reply],
          (error: Error): [Error, null] => [error, null],
        ),
      ),
    );
  const pipeline = client.pipeline();
  for (const item of items) send(pipeline, item);
  return ((await pipeline.exec()) ?? []) as CommandReplies;
}

/**
 * Lua functions for scripts that read a sorted set by score from its low end:
 * `lowest(key)` is the score of the set's first member (nil when the set is empty or
 * missing), and `lowestAtMost(key, score)` says whether that score is at most `score`. They
 * read one member, where a range read by score walks down the skip list's levels, a cache
 * miss each once the set is large: a script that asks first reads one member of each set on a
 * pass that finds nothing, however large the set.
 */
export const LUA_LOWEST_AT_MOST = `
local function lowest(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return tonumber(first[2])
end
local function lowestAtMost(key, score)
  local first = lowest(key)
  return first ~= nil and first <= tonumber(score)
end
`;

/** The oldest Redis the broker runs on: audit streams are trimmed with `XADD ... MINID` (6.2). */
export const MIN_REDIS_VERSION = [6, 2] as const;

/** What is wrong with the Redis that `INFO server` describes, or undefined when it will do (or does not say). */
export function redisVersionProblem(info: string): string | undefined {
  const match = /^redis_version:(\d+)\.(\d+)/m.exec(info);
  if (!match) return undefined;
  const [major, minor] = [Number(match[1]), Number(match[2])];
  const [needMajor, needMinor] = MIN_REDIS_VERSION;
  if (major > needMajor || (major === needMajor && minor >= needMinor)) return undefined;
  return `Redis ${major}.${minor} is too old: jitkey needs Redis ${needMajor}.${needMinor} or later`;
}

/**
 * Every Redis key the broker uses, in one place. Keys carry the tenant from the start.
 *
 * Records live in **shards**: a task, its leases, their indexes and their audit events share
 * one shard, whose keys share one hash tag (`{<prefix>:<tenant>:<n>}`) and so one Redis
 * Cluster slot. That lets one Lua script change a record, its indexes and write its audit
 * event together, on a single Redis or a cluster alike. The shard of an id is fixed by the
 * id itself (`shardOfId`); the number of shards is fixed for the life of the data.
 */
export class RedisKeys {
  readonly base: string;
  readonly #shards: ShardKeys[];

  constructor(
    readonly prefix: string,
    readonly tenant: string = DEFAULT_TENANT,
    readonly shardCount = 16,
  ) {
    this.base = `${prefix}:${tenant}`;
    this.#shards = Array.from({ length: shardCount }, (_, n) => new ShardKeys(this.base, n));
  }

  /** The shard a task or lease id lives in. */
  forId(id: string): ShardKeys {
    return this.shard(shardOfId(id, this.shardCount));
  }

  /** The shard that holds an agent's events when they name no task. */
  forAgent(agentId: string): ShardKeys {
    return this.shard(shardOfText(agentId, this.shardCount));
  }

  shard(n: number): ShardKeys {
    const shard = this.#shards[n];
    if (!shard) throw new RangeError(`no shard ${n}`);
    return shard;
  }

  get shards(): readonly ShardKeys[] {
    return this.#shards;
  }

  /** Settings fixed for the life of the data (the shard count), checked at start. */
  get meta(): string {
    return `${this.base}:meta`;
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
  /** Every broker process's public signing keys (kid → JWK and when last seen). */
  get publishedKeys(): string {
    return `${this.base}:jwks`;
  }
  /** A DPoP proof already seen (RFC 9449 §11.1 replay check), by a digest of its key and `jti`. */
  dpopProof(digest: string): string {
    return `${this.base}:dpop:${digest}`;
  }
  /** Pub/sub channel of changed record keys, for caches of record state. */
  get changesChannel(): string {
    return `${this.base}:changes`;
  }
  /** Pub/sub channel of live events (task decisions, revocations) for waiting clients. */
  get eventsChannel(): string {
    return `${this.base}:events`;
  }
  /** BullMQ's key prefix; hash-tagged so one queue's keys share a slot. */
  get queuePrefix(): string {
    return `{${this.base}:q}`;
  }
}

/** The keys of one shard. Every key here carries the shard's hash tag. */
export class ShardKeys {
  /** The hash tag every key of this shard carries. */
  readonly tag: string;

  constructor(
    base: string,
    readonly index: number,
  ) {
    this.tag = `{${base}:${index}}`;
  }

  task(id: string): string {
    return `${this.tag}:task:${id}`;
  }
  /** Every lease of a task, by issue time (kept as long as the task record). */
  taskLeases(taskId: string): string {
    return `${this.tag}:task-leases:${taskId}`;
  }
  lease(id: string): string {
    return `${this.tag}:lease:${id}`;
  }
  /** Leases delegated from a lease (token exchange), by issue time: revocation walks them. */
  leaseChildren(id: string): string {
    return `${this.tag}:lease-children:${id}`;
  }
  /** An agent's tasks in this shard, by creation time. */
  agentTasks(agentId: string): string {
    return `${this.tag}:agent-tasks:${agentId}`;
  }
  /** A resource's leases in this shard, by issue time. */
  resourceLeases(resource: string): string {
    return `${this.tag}:resource-leases:${resource}`;
  }
  /** Handle → lease id, for leases not yet revoked (orphan sweeps ask it). */
  handles(resource: string): string {
    return `${this.tag}:handles:${resource}`;
  }
  /** Tasks by creation time. */
  get allTasks(): string {
    return `${this.tag}:tasks`;
  }
  /** Pending tasks by creation time. */
  get pendingTasks(): string {
    return `${this.tag}:tasks:pending`;
  }
  /** Pending and approved tasks, by when they must be looked at next (their expiry). */
  get liveTasks(): string {
    return `${this.tag}:tasks:live`;
  }
  /** Leases by issue time. */
  get allLeases(): string {
    return `${this.tag}:leases`;
  }
  /** `issuing` and `active` leases, by when they must be looked at next (expiry, or a stale mint). */
  get liveLeases(): string {
    return `${this.tag}:leases:live`;
  }
  /** Leases whose revocation is requested or under way, by when to look again if it stalls. */
  get revokingLeases(): string {
    return `${this.tag}:leases:revoking`;
  }
  /** `revoke_failed` leases, by when to retry them. */
  get failedLeases(): string {
    return `${this.tag}:leases:failed`;
  }
  /** The shard's audit stream: every event stored once. */
  get audit(): string {
    return `${this.tag}:audit`;
  }
  /** Where the shard's hash chain stands: last sealed event id, its link, events sealed. */
  get auditSeal(): string {
    return `${this.tag}:audit-seal`;
  }
  /** Signed checkpoints of the shard's hash chain. */
  get auditCheckpoints(): string {
    return `${this.tag}:audit-checkpoints`;
  }
  /** Ids of a task's audit events (its leases' events included). */
  auditOfTask(taskId: string): string {
    return `${this.tag}:audit-task:${taskId}`;
  }
  /** Ids of an agent's audit events in this shard. */
  auditOfAgent(agentId: string): string {
    return `${this.tag}:audit-agent:${agentId}`;
  }
}
