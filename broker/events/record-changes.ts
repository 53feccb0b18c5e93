import type { Logger } from "../logger.ts";
import { type RedisClient, subscriberOf } from "../redis.ts";

/** A listener for changed records: the key of each, or `undefined` when changes may have been missed. */
export type ChangeListener = (key: string | undefined) => void;

/**
 * Tells this process which task and lease records other processes changed: every atomic write
 * call publishes the keys of the records it patched on one channel. Local caches of record
 * state drop what changed, and drop everything (`undefined`) whenever the subscription was
 * interrupted, since messages sent meanwhile are lost.
 */
export class RecordChanges {
  readonly #listeners = new Set<ChangeListener>();
  #subscriber: RedisClient | undefined;
  #connected = false;
  #epoch = 0;

  constructor(private readonly deps: { redis: RedisClient; channel: string; logger: Logger }) {}

  /**
   * Calls `listener` for every change from now on. Until the subscription is in place (and
   * after any interruption) `connected` is false: a cache must not trust what it holds then.
   */
  subscribe(listener: ChangeListener): () => void {
    this.#listeners.add(listener);
    this.connect();
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Whether every change since the last reset reached this process. */
  get connected(): boolean {
    return this.#connected;
  }

  /**
   * Changes with every reset. A record read while `connected`, whose reply arrives with the
   * epoch unchanged, is one no change message can have been missed for.
   */
  get epoch(): number {
    return this.#epoch;
  }

  async close(): Promise<void> {
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    this.#connected = false;
    this.#listeners.clear();
    if (subscriber) await subscriber.quit().catch(() => subscriber.disconnect());
  }

  private connect(): void {
    if (this.#subscriber) return;
    const subscriber = subscriberOf(this.deps.redis, "jitkey-changes");
    this.#subscriber = subscriber;
    const reset = () => {
      this.#connected = false;
      this.#epoch += 1;
      for (const listener of this.#listeners) listener(undefined);
    };
    // Subscribing (again, after any reconnect) and hearing it confirmed is what makes the stream
    // of changes whole from then on.
    const subscribe = () => {
      subscriber.subscribe(this.deps.channel).then(
        () => {
          if (this.#subscriber !== subscriber) return;
          reset();
          this.#connected = true;
        },
        (error: Error) => this.deps.logger.warn("record changes subscribe failed", { error: error.message }),
      );
    };
    subscriber.on("error", (error: Error) =>
      this.deps.logger.warn("record changes connection", { error: error.message }),
    );
    subscriber.on("close", reset);
    subscriber.on("ready", subscribe);
    // A message names every record one script call patched, a line each.
    subscriber.on("message", (_channel: string, message: string) => {
      for (const key of message.split("\n")) for (const listener of this.#listeners) listener(key);
    });
  }
}
