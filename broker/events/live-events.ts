import { type AuditEvent, notificationName, publicEventId } from "../audit/audit-log.ts";
import type { NotificationEvent } from "../config.ts";
import type { Logger } from "../logger.ts";
import { type RedisClient, subscriberOf } from "../redis.ts";

/** A task or lease event as clients see it: its notification name and the audit event. */
export interface LiveEvent {
  readonly name: NotificationEvent;
  readonly event: AuditEvent;
}

type Listener = (event: LiveEvent) => void;

/**
 * Events as they happen, from every broker process: the atomic writes publish them on one
 * Redis channel, and this process holds one subscriber connection (opened on first use) that
 * fans them out to local listeners — long-polling task reads and `GET /v1/events` streams.
 * Delivery is best effort (a reconnect may drop some), so listeners re-read state on wake-up
 * and on timeout; durable delivery (webhooks) reads the audit streams instead.
 */
export class LiveEvents {
  readonly #listeners = new Set<Listener>();
  #subscriber: RedisClient | undefined;
  #subscribed: Promise<void> | undefined;

  constructor(private readonly deps: { redis: RedisClient; channel: string; logger: Logger }) {}

  /** Calls `listener` for each event until the returned function is called. */
  subscribe(listener: Listener): () => void {
    this.#listeners.add(listener);
    this.connect();
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /**
   * Resolves once this process's subscription is in place, so an event published after it
   * reaches the listeners; a caller that subscribed reads state only after this.
   */
  ready(): Promise<void> {
    this.connect();
    return this.#subscribed ?? Promise.resolve();
  }

  get listeners(): number {
    return this.#listeners.size;
  }

  async close(): Promise<void> {
    this.#listeners.clear();
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    this.#subscribed = undefined;
    if (subscriber) await subscriber.quit().catch(() => subscriber.disconnect());
  }

  private connect(): void {
    if (this.#subscriber) return;
    const subscriber = subscriberOf(this.deps.redis, "jitkey-events");
    this.#subscriber = subscriber;
    subscriber.on("error", (error: Error) =>
      this.deps.logger.warn("live events connection", { error: error.message }),
    );
    // One message per write call: an event per line (JSON holds no raw line break).
    subscriber.on("message", (_channel: string, message: string) => {
      for (const line of message.split("\n")) this.dispatch(line);
    });
    this.#subscribed = subscriber.subscribe(this.deps.channel).then(
      () => undefined,
      (error: Error) => {
        // Waiters still re-read at their deadline; a later subscribe retries.
        this.deps.logger.warn("live events subscribe failed", { error: error.message });
        this.#subscriber = undefined;
        subscriber.disconnect();
      },
    );
  }

  /** Lines are `<shard> <stream id> <event json>`. */
  private dispatch(message: string): void {
    const first = message.indexOf(" ");
    const second = message.indexOf(" ", first + 1);
    if (first < 0 || second < 0) return;
    let body: Omit<AuditEvent, "id">;
    try {
      body = JSON.parse(message.slice(second + 1));
    } catch {
      return;
    }
    const event = {
      id: publicEventId(message.slice(first + 1, second), Number(message.slice(0, first))),
      ...body,
    } as AuditEvent;
    const name = notificationName(event);
    if (!name) return;
    for (const listener of this.#listeners) {
      try {
        listener({ name, event });
      } catch (error) {
        this.deps.logger.warn("live event listener failed", { error: (error as Error).message });
      }
    }
  }
}
