import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { type Job, Queue, UnrecoverableError, Worker } from "bullmq";
import type { Cluster, Redis } from "ioredis";
import { type AuditEvent, notificationName, publicEventId } from "../broker/audit/audit-log.ts";
import type { Clock } from "../broker/clock.ts";
import type { Config, NotificationEvent } from "../broker/config.ts";
import type { Logger } from "../broker/logger.ts";
import type { Metrics } from "../broker/metrics.ts";
import { sendWebhook, WebhookDeliveryError } from "../broker/notifications/webhook-sender.ts";
import type { RedisKeys, ShardKeys } from "../broker/redis.ts";
import { reportQueueErrors } from "./queues.ts";

/** Webhook deliveries: their own queue, so a slow receiver never delays a revocation. */
export const NOTIFICATION_QUEUE = "notifications";

/** The consumer group that reads the audit streams for webhooks. */
const GROUP = "jitkey-notifications";

/** One event for one webhook. */
export interface Delivery {
  webhook: string;
  name: NotificationEvent;
  event: AuditEvent;
}

/**
 * Reads every shard's audit stream through a Redis consumer group and turns the events
 * webhooks subscribe to into BullMQ delivery jobs (job id = webhook + event id, so an event
 * read twice is delivered once). An event is acknowledged only after its jobs are queued; a
 * worker that dies first leaves it pending, and another worker claims it after `claimAfterMs`.
 * Nothing is lost across crashes, and the request that caused an event never waits for it.
 */
export class NotificationDispatcher {
  readonly #consumer = `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  #running = false;
  #loop: Promise<void> | undefined;
  #groupsReady = false;

  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      queue: Queue<Delivery>;
      notifications: Config["notifications"];
      logger: Logger;
      idleMs?: number;
      claimAfterMs?: number;
    },
  ) {}

  /** Reads what is new (and what a dead worker left unacknowledged) once; returns deliveries queued. */
  async dispatchOnce(): Promise<number> {
    if (this.deps.notifications.webhooks.length === 0) return 0;
    await this.ensureGroups();
    const counts = await Promise.all(this.deps.keys.shards.map((shard) => this.dispatchShard(shard)));
    return counts.reduce((sum, n) => sum + n, 0);
  }

  start(): void {
    if (this.#running || this.deps.notifications.webhooks.length === 0) return;
    this.#running = true;
    this.#loop = (async () => {
      let failures = 0;
      while (this.#running) {
        let pause = this.deps.idleMs ?? 250;
        try {
          if ((await this.dispatchOnce()) > 0) pause = 0;
          failures = 0;
        } catch (error) {
          failures += 1;
          if (failures === 1 || failures % 50 === 0)
            this.deps.logger.warn("notification dispatch failed; retrying", {
              error: (error as Error).message,
            });
          pause = Math.min(5000, pause * 2 ** Math.min(failures, 5));
        }
        if (pause > 0 && this.#running) await new Promise((resolve) => setTimeout(resolve, pause));
      }
    })();
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#loop;
  }

  /** Groups start at the stream's end: webhooks receive what happens from the first start on. */
  private async ensureGroups(): Promise<void> {
    if (this.#groupsReady) return;
    await Promise.all(
      this.deps.keys.shards.map((shard) =>
        this.deps.redis.xgroup("CREATE", shard.audit, GROUP, "$", "MKSTREAM").catch((error: Error) => {
          if (!error.message.includes("BUSYGROUP")) throw error;
        }),
      ),
    );
    this.#groupsReady = true;
  }

  private async dispatchShard(shard: ShardKeys): Promise<number> {
    const { redis } = this.deps;
    const claimed = (await redis.xautoclaim(
      shard.audit,
      GROUP,
      this.#consumer,
      this.deps.claimAfterMs ?? 30_000,
      "0-0",
      "COUNT",
      100,
    )) as [string, [string, string[]][]];
    const fresh = (await redis.xreadgroup(
      "GROUP",
      GROUP,
      this.#consumer,
      "COUNT",
      200,
      "STREAMS",
      shard.audit,
      ">",
    )) as [string, [string, string[]][]][] | null;
    const entries = [...(claimed[1] ?? []), ...(fresh?.[0]?.[1] ?? [])].filter((entry) => entry?.[1]);
    if (entries.length === 0) return 0;
    const deliveries: { name: string; data: Delivery; opts: { jobId: string } }[] = [];
    for (const [streamId, fields] of entries) {
      const event = {
        id: publicEventId(streamId, shard.index),
        ...JSON.parse(fields[1] ?? "{}"),
      } as AuditEvent;
      const name = notificationName(event);
      if (!name) continue;
      for (const webhook of this.deps.notifications.webhooks) {
        if (webhook.events.includes(name))
          deliveries.push({
            name: "deliver",
            data: { webhook: webhook.name, name, event },
            // BullMQ job ids may not hold ":"; event ids are digits and dashes, so this is unambiguous.
            opts: { jobId: `${webhook.name}-${event.id}` },
          });
      }
    }
    if (deliveries.length > 0) await this.deps.queue.addBulk(deliveries);
    await redis.xack(shard.audit, GROUP, ...entries.map(([streamId]) => streamId));
    return deliveries.length;
  }
}

/** The webhook delivery queue, with its retry policy. */
export function notificationQueue(
  connection: Redis | Cluster,
  prefix: string,
  notifications: Config["notifications"],
  logger?: Logger,
): Queue<Delivery> {
  const queue = new Queue<Delivery>(NOTIFICATION_QUEUE, {
    connection,
    prefix,
    defaultJobOptions: {
      attempts: notifications.attempts,
      backoff: { type: "exponential", delay: notifications.backoffMs },
      removeOnComplete: true,
      removeOnFail: { age: 7 * 24 * 3600, count: 10_000 },
    },
  });
  reportQueueErrors(queue, logger);
  return queue;
}

/** Delivers webhook jobs; a receiver's 4xx (but 408/429) is final, anything else is retried. */
export function startNotificationWorker(deps: {
  connection: Redis | Cluster;
  prefix: string;
  notifications: Config["notifications"];
  metrics: Metrics;
  clock: Clock;
  logger: Logger;
}): Worker<Delivery> {
  const webhooks = new Map(deps.notifications.webhooks.map((webhook) => [webhook.name, webhook]));
  const worker = new Worker<Delivery>(
    NOTIFICATION_QUEUE,
    async (job: Job<Delivery>) => {
      const webhook = webhooks.get(job.data.webhook);
      if (!webhook) throw new UnrecoverableError(`webhook ${job.data.webhook} is no longer configured`);
      try {
        await sendWebhook(webhook, job.data, {
          timeoutMs: deps.notifications.timeoutMs,
          now: new Date(deps.clock.now()),
        });
      } catch (error) {
        const permanent = error instanceof WebhookDeliveryError && error.permanent;
        const final = permanent || job.attemptsMade + 1 >= (job.opts.attempts ?? 1);
        deps.metrics.webhookDeliveries.inc({ webhook: webhook.name, result: final ? "failed" : "retrying" });
        if (final)
          deps.logger.error("webhook delivery failed for good", {
            webhook: webhook.name,
            eventId: job.data.event.id,
            error: (error as Error).message,
          });
        throw permanent ? new UnrecoverableError((error as Error).message) : error;
      }
      deps.metrics.webhookDeliveries.inc({ webhook: webhook.name, result: "delivered" });
    },
    { connection: deps.connection, prefix: deps.prefix, concurrency: 8 },
  );
  worker.on("error", (error) => deps.logger.error("notification worker error", { error: error.message }));
  return worker;
}
