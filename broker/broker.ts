import { dirname, join, resolve } from "node:path";
import type { Worker } from "bullmq";
import { ZodError } from "zod";
import { SigningKeyring } from "../adapters/jwt/signing-keys.ts";
import { adapterLoaders } from "../adapters/registry.ts";
import type { AdapterContext, CredentialAdapter } from "../adapters/types.ts";
import { DueSweeper } from "../jobs/due-sweeper.ts";
import { NotificationDispatcher, notificationQueue, startNotificationWorker } from "../jobs/notifications.ts";
import { RevocationQueue } from "../jobs/queues.ts";
import { Reconciler } from "../jobs/reconciler.ts";
import { type RevocationWorkerOptions, startRevocationWorker } from "../jobs/revoke.worker.ts";
import { AuditLog } from "./audit/audit-log.ts";
import { AuditSealer } from "./audit/audit-seal.ts";
import { type Clock, systemClock } from "./clock.ts";
import { type Config, ConfigError, publicUrl, type ResourceConfig } from "./config.ts";
import { LiveEvents } from "./events/live-events.ts";
import { RecordChanges } from "./events/record-changes.ts";
import { SlidingWindowLimiter } from "./http/rate-limiter.ts";
import { AgentVerifier } from "./identity/agent-verifier.ts";
import { type IdentityVerifier, VerifiedIdentities } from "./identity/verified-identities.ts";
import { Introspection } from "./leases/introspection.ts";
import type { Lease } from "./leases/lease.ts";
import { LeaseMinter } from "./leases/lease-minter.ts";
import { LeaseRenewer } from "./leases/lease-renewer.ts";
import { LeaseRevoker } from "./leases/lease-revoker.ts";
import { LeaseService } from "./leases/lease-service.ts";
import { LeaseStates } from "./leases/lease-states.ts";
import { PolicyRecheck } from "./leases/policy-recheck.ts";
import { RevocationService } from "./leases/revocation-service.ts";
import { RedisLocks } from "./locks.ts";
import { createLogger, type Logger } from "./logger.ts";
import { Metrics } from "./metrics.ts";
import { DpopVerifier } from "./oauth/dpop.ts";
import { leaseChildrenReader } from "./oauth/lease-children.ts";
import { TokenExchange } from "./oauth/token-exchange.ts";
import { PrincipalTokens } from "./operators/principal-tokens.ts";
import type { PolicyEngine } from "./policy/policy-engine.ts";
import { configFileSources, PolicyStore, pickSources } from "./policy/policy-store.ts";
import { Quotas } from "./quotas/quotas.ts";
import { connectRedis, hasRedisTarget, type RedisClient, RedisKeys, redisVersionProblem } from "./redis.ts";
import { PublishedKeys } from "./signing/published-keys.ts";
import { AtomicWriter } from "./store/atomic-write.ts";
import { RecordStore } from "./store/record-store.ts";
import type { Task } from "./tasks/task.ts";
import { TaskService } from "./tasks/task-service.ts";
import { TaskTimeline } from "./tasks/task-timeline.ts";

export interface BrokerOptions {
  logger?: Logger;
  /** The config file it was loaded from: policy reloads read it again. */
  configPath?: string;
  clock?: Clock;
  /** Adapters to use instead of the registry's, by resource name (tests, embedding). */
  adapters?: ReadonlyMap<string, CredentialAdapter>;
  /** The issuer URL of broker-signed credentials; default from `http`. */
  issuer?: string;
  /** Dev-mode extras shown by the dev routes. */
  dev?: import("./dev-mode.ts").DevModeSecrets;
}

/** Everything a broker process holds: clients, domain services, the queue. Stateless itself. */
export interface Broker {
  readonly config: Config;
  readonly redis: RedisClient;
  /** The connection BullMQ queues and workers use (never fails a command). */
  readonly queueConnection: RedisClient;
  readonly keys: RedisKeys;
  readonly logger: Logger;
  readonly clock: Clock;
  readonly issuer: string;
  readonly metrics: Metrics;
  readonly audit: AuditLog;
  readonly policy: PolicyEngine;
  /** Holds the policy in force; reloads it on SIGHUP or a file change once `watch()`ed. */
  readonly policyStore: PolicyStore;
  readonly adapters: ReadonlyMap<string, CredentialAdapter>;
  readonly signingKeys: SigningKeyring;
  /** Every broker process's public keys, published in Redis. */
  readonly publishedKeys: PublishedKeys;
  readonly verifier: IdentityVerifier;
  readonly principals: PrincipalTokens;
  readonly tasks: TaskService;
  /** Tool calls recorded for tasks, and each task's timeline. */
  readonly timeline: TaskTimeline;
  readonly leases: LeaseService;
  readonly leaseStore: RecordStore<Lease>;
  readonly taskStore: RecordStore<Task>;
  readonly revoker: LeaseRevoker;
  readonly revocations: RevocationService;
  readonly introspection: Introspection;
  /** Checks DPoP proofs (RFC 9449) on mint and token exchange. */
  readonly dpop: DpopVerifier;
  /** Delegation by token exchange (RFC 8693) at `POST /v1/token`. */
  readonly tokenExchange: TokenExchange;
  readonly queue: RevocationQueue;
  readonly sweeper: DueSweeper;
  /** Task and lease events as they happen, for waiting clients. */
  readonly events: LiveEvents;
  readonly notifications: NotificationDispatcher;
  readonly reconciler: Reconciler;
  /** Extends the audit hash chains, signs checkpoints, verifies the trail. */
  readonly sealer: AuditSealer;
  readonly dev: import("./dev-mode.ts").DevModeSecrets | undefined;
  /** Starts revocation workers and the due sweeper in this process and schedules the reconciler. */
  startWorkers(options?: Partial<RevocationWorkerOptions> & { sweep?: boolean }): Promise<Worker>;
  /** Closes workers, queues, adapters and Redis connections. */
  close(): Promise<void>;
}

/** Builds a broker from a validated config. Connects to Redis; does not listen. */
export async function createBroker(config: Config, options: BrokerOptions = {}): Promise<Broker> {
  if (!hasRedisTarget(config.redis))
    throw new Error(
      "createBroker needs redis.url, cluster or sentinel (main.ts starts the embedded redis-server)",
    );
  const logger = options.logger ?? createLogger({ level: config.log.level });
  const clock = options.clock ?? systemClock;
  const issuer = options.issuer ?? publicUrl(config);
  const keys = new RedisKeys(config.redis.prefix, undefined, config.redis.shards);
  const redis = connectRedis(config.redis, { name: "jitkey-api" });
  const queueConnection = connectRedis(config.redis, { forQueues: true, name: "jitkey-queue" });
  let signingKeys: SigningKeyring;
  const locks = new RedisLocks(redis, (name) => keys.lock(name));
  const adapters = new Map<string, CredentialAdapter>();
  try {
    signingKeys = await SigningKeyring.load({
      keyFile: config.signing.keyFile,
      generatedFile: join(resolve(config.data.dir), "signing-keys.json"),
      pemAlgorithm: config.signing.pemAlgorithm,
    });
    await firstContact(redis, async () => {
      await checkRedisVersion(redis);
      await checkShardCount(redis, keys);
    });
    for (const [index, resource] of config.resources.entries()) {
      const context: AdapterContext = {
        resource: resource.name,
        scopes: resource.scopes,
        issuer,
        signingKeys,
        logger,
        clock,
        locks,
      };
      adapters.set(
        resource.name,
        options.adapters?.get(resource.name) ?? (await buildAdapter(resource, index, context)),
      );
      if (!resource.owner) logger.warn("resource has no accountable owner", { resource: resource.name });
    }
  } catch (error) {
    // A broker that cannot start leaves nothing open behind it.
    await Promise.allSettled([...adapters.values()].map((adapter) => adapter.close?.()));
    redis.disconnect();
    queueConnection.disconnect();
    throw error;
  }

  const metrics = new Metrics({
    countLiveLeases: async () => {
      const counts = await Promise.all(
        keys.shards.flatMap((shard) => [
          redis.zcard(shard.liveLeases),
          redis.zcard(shard.revokingLeases),
          redis.zcard(shard.failedLeases),
        ]),
      );
      return counts.reduce((sum, n) => sum + n, 0);
    },
    countPendingTasks: async () => {
      const counts = await Promise.all(keys.shards.map((shard) => redis.zcard(shard.pendingTasks)));
      return counts.reduce((sum, n) => sum + n, 0);
    },
    defaultMetrics: false,
  });
  const leaseStore = new RecordStore<Lease>(redis, keys, (shard, id) => shard.lease(id));
  const taskStore = new RecordStore<Task>(redis, keys, (shard, id) => shard.task(id));
  const writer = new AtomicWriter(redis, {
    retentionMs: config.retention.auditDays * 86_400_000,
    channel: keys.eventsChannel,
    changes: keys.changesChannel,
  });
  const audit = new AuditLog({
    redis,
    keys,
    writer,
    logger,
    clock,
    taskOfLease: async (leaseId) => (await leaseStore.get(leaseId))?.taskId,
  });
  const policyStore = await PolicyStore.open({
    resources: config.resources,
    initial: pickSources(config),
    readSources: options.configPath ? configFileSources(options.configPath) : async () => pickSources(config),
    baseDir: options.configPath ? dirname(resolve(options.configPath)) : process.cwd(),
    watchFiles: options.configPath ? [resolve(options.configPath)] : [],
    logger,
    registry: metrics.registry,
    clock,
  });
  const policy = policyStore.engine;
  const queue = new RevocationQueue(queueConnection, keys.queuePrefix, logger);
  const states = new LeaseStates(keys, {
    staleMs: config.revocation.staleSeconds * 1000,
    retentionSeconds: config.retention.leaseRecordDays * 86_400,
  });
  const revoker = new LeaseRevoker({
    leases: leaseStore,
    tasks: taskStore,
    states,
    adapters,
    queue,
    audit,
    metrics,
    clock,
    logger,
    revocation: config.revocation,
    childrenOf: leaseChildrenReader(redis, keys),
  });
  const quotas = new Quotas({
    redis,
    keys,
    leases: leaseStore,
    tasks: taskStore,
    metrics,
    clock,
    quotas: config.quotas,
    staleMs: config.revocation.staleSeconds * 1000,
    keepSeconds: config.tasks.maxTtlSeconds + config.revocation.staleSeconds,
  });
  const recheck = new PolicyRecheck({
    redis,
    keys,
    leases: leaseStore,
    tasks: taskStore,
    revoker,
    clock,
    logger,
  });
  policyStore.onReload(async ({ engine }) => {
    await recheck.run(engine);
  });
  const minter = new LeaseMinter({
    tasks: taskStore,
    leases: leaseStore,
    states,
    revoker,
    policy,
    adapters,
    audit,
    metrics,
    clock,
    logger,
    quotas,
  });
  const renewer = new LeaseRenewer({ tasks: taskStore, states, policy, adapters, audit, metrics, clock });
  const leases = new LeaseService({
    redis,
    keys,
    leases: leaseStore,
    minter,
    renewer,
    revoker,
    audit,
    clock,
  });
  const publishedKeys = new PublishedKeys({
    redis,
    key: keys.publishedKeys,
    local: signingKeys,
    clock,
    keepSeconds: config.signing.publishedKeySeconds,
  });
  await publishedKeys.start();
  const events = new LiveEvents({ redis, channel: keys.eventsChannel, logger });
  const changes = new RecordChanges({ redis, channel: keys.changesChannel, logger });
  const tasks = new TaskService({
    redis,
    events,
    keys,
    tasks: taskStore,
    policy,
    queue,
    audit,
    metrics,
    clock,
    quotas,
    config,
  });
  const timeline = new TaskTimeline({
    keys,
    tasks,
    taskStore,
    leaseStore,
    audit,
    clock,
    limits: config.limits,
    limiter: new SlidingWindowLimiter(redis, keys, clock),
  });
  const revocations = new RevocationService({
    redis,
    keys,
    tasks,
    taskStore,
    leaseStore,
    revoker,
    audit,
    clock,
    retentionDays: config.retention.leaseRecordDays,
  });
  const reconciler = new Reconciler({
    redis,
    keys,
    adapters,
    audit,
    metrics,
    clock,
    logger,
    revocation: config.revocation,
    retention: config.retention,
  });
  const sealer = new AuditSealer({
    redis,
    keys,
    issuer,
    signingKey: signingKeys.keyFor("ES256"),
    verifyKey: publishedKeys.verifyKey,
    locks,
    clock,
    retentionMs: config.retention.auditDays * 86_400_000,
  });
  const sweeper = new DueSweeper({
    redis,
    keys,
    queue,
    clock,
    logger,
    staleMs: config.revocation.staleSeconds * 1000,
  });
  const deliveries = notificationQueue(queueConnection, keys.queuePrefix, config.notifications, logger);
  const notifications = new NotificationDispatcher({
    redis,
    keys,
    queue: deliveries,
    notifications: config.notifications,
    logger,
  });
  const introspection = new Introspection({
    redis,
    keys,
    issuer,
    verifyKey: publishedKeys.verifyKey,
    states,
    policy,
    changes,
    audit,
    metrics,
    clock,
  });
  const verifier = new VerifiedIdentities(new AgentVerifier(config.identity, () => clock.now()), {
    clock,
    maxTokenAgeSeconds: config.identity.maxTokenAgeSeconds,
  });
  const dpop = new DpopVerifier({ redis, keys, clock, windowSeconds: config.dpop.proofWindowSeconds });
  const tokenExchange = new TokenExchange({
    introspection,
    states,
    revoker,
    policy,
    adapters,
    verifier,
    dpop,
    tokenEndpoint: `${issuer}/v1/token`,
    audit,
    metrics,
    clock,
    maxDepth: config.delegation.maxDepth,
  });
  const workers: { close(): Promise<void> }[] = [];

  return {
    config,
    policyStore,
    redis,
    queueConnection,
    keys,
    logger,
    clock,
    issuer,
    metrics,
    audit,
    policy,
    adapters,
    signingKeys,
    verifier,
    principals: new PrincipalTokens(config),
    tasks,
    timeline,
    leases,
    leaseStore,
    taskStore,
    revoker,
    revocations,
    introspection,
    dpop,
    tokenExchange,
    publishedKeys,
    queue,
    sweeper,
    events,
    notifications,
    reconciler,
    sealer,
    dev: options.dev,
    async startWorkers({ sweep = true, ...workerOptions } = {}) {
      const worker = startRevocationWorker(
        { connection: queueConnection, prefix: keys.queuePrefix, revoker, tasks, reconciler, sealer, logger },
        { concurrency: config.revocation.concurrency, ...workerOptions },
      );
      workers.push(worker);
      await worker.waitUntilReady();
      if (config.notifications.webhooks.length > 0) {
        workers.push(
          startNotificationWorker({
            connection: queueConnection,
            prefix: keys.queuePrefix,
            notifications: config.notifications,
            metrics,
            clock,
            logger,
          }),
        );
        notifications.start();
      }
      if (sweep) sweeper.start();
      await queue.scheduleReconciler(config.revocation.reconcileIntervalSeconds * 1000);
      await queue.scheduleSealing(config.audit.sealIntervalSeconds * 1000);
      return worker as unknown as Worker;
    },
    async close() {
      publishedKeys.stop();
      policyStore.close();
      await Promise.allSettled([sweeper.stop(), notifications.stop(), events.close(), changes.close()]);
      await Promise.allSettled(workers.map((worker) => worker.close()));
      await Promise.allSettled([queue.close(), deliveries.close()]);
      await Promise.allSettled([...adapters.values()].map((adapter) => adapter.close?.()));
      await Promise.allSettled([redis.quit(), queueConnection.quit()]);
    },
  };
}

/**
 * Runs the first commands of a new connection. If Redis cannot be reached, the error names
 * why (refused, a certificate that does not verify, a wrong password) rather than only that
 * the command gave up.
 */
async function firstContact(redis: RedisClient, commands: () => Promise<void>): Promise<void> {
  let cause: Error | undefined;
  const note = (error: Error) => {
    cause = error;
  };
  redis.on("error", note);
  try {
    await commands();
  } catch (error) {
    if (cause && !(error instanceof ConfigError))
      throw new Error(`cannot use Redis: ${cause.message}`, { cause: error });
    throw error;
  } finally {
    redis.off("error", note);
  }
}

/** Refuses a Redis older than the broker needs, naming its version, before anything is written. */
async function checkRedisVersion(redis: RedisClient): Promise<void> {
  // A Redis whose ACL hides INFO is taken as it is; an old one fails at its first audit write.
  const info = await redis.info("server").catch((error: Error) => {
    if (/NOPERM|unknown command/i.test(error.message)) return "";
    throw error;
  });
  const problem = redisVersionProblem(info);
  if (problem) throw new ConfigError(problem);
}

/** The shard count is fixed for the life of the data: refuse to run with another one. */
async function checkShardCount(redis: RedisClient, keys: RedisKeys): Promise<void> {
  await redis.hsetnx(keys.meta, "shards", String(keys.shardCount));
  const stored = Number(await redis.hget(keys.meta, "shards"));
  if (stored !== keys.shardCount)
    throw new ConfigError(
      `redis.shards is ${keys.shardCount}, but the data under prefix ${keys.prefix} was written with ${stored} shards; set redis.shards: ${stored}`,
    );
}

/** Builds a resource's adapter; options the adapter refuses become a ConfigError naming the field. */
async function buildAdapter(
  resource: ResourceConfig,
  index: number,
  context: AdapterContext,
): Promise<CredentialAdapter> {
  const factory = await adapterLoaders[resource.adapter]();
  try {
    return factory(resource.options, context);
  } catch (error) {
    if (error instanceof ZodError) {
      const fields = error.issues.map(
        (issue) =>
          `resources.${index}.options${issue.path.length > 0 ? `.${issue.path.join(".")}` : ""}: ${issue.message}`,
      );
      throw new ConfigError(
        `resource ${resource.name} (${resource.adapter}) has invalid options:\n${fields.join("\n")}`,
      );
    }
    throw error;
  }
}
