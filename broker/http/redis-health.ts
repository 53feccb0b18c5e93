import type { RequestHandler, Response } from "express";
import { UnavailableError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { RedisClient } from "../redis.ts";

/** ioredis's ways of saying a command never reached Redis or never came back. */
const CONNECTION_FAILURES = new Set([
  "Command timed out",
  "Connection is closed.",
  "Stream isn't writeable and enableOfflineQueue options is false",
]);
const SOCKET_ERROR_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "ENOTCONN"]);
/**
 * A Redis Cluster or Sentinel setup that cannot serve the key now: ioredis gave up following
 * redirections or finding the slots, or a node says the cluster (or its master) is down or
 * the slot is moving. They pass when nodes return or fail over.
 */
const UNAVAILABLE_PREFIXES = [
  "Too many Cluster redirections.",
  "Failed to refresh slots cache.",
  "Cluster isn't ready",
  "CLUSTERDOWN ",
  "TRYAGAIN ",
  "MASTERDOWN ",
  "LOADING ",
  "READONLY ",
];

/** Is `error` a Redis connection failure (or an unavailable cluster) rather than a reply or a bug? */
export function isRedisConnectionError(error: unknown, seen = new Set<unknown>()): boolean {
  if (!(error instanceof Error) || seen.has(error)) return false;
  seen.add(error);
  const { code, previousErrors } = error as { code?: unknown; previousErrors?: unknown };
  // A MULTI whose queued commands failed that way (ioredis keeps their errors on EXECABORT; an
  // error can be among its own previous errors, hence `seen`).
  if (
    Array.isArray(previousErrors) &&
    previousErrors.some((previous) => isRedisConnectionError(previous, seen))
  )
    return true;
  return (
    error.name === "MaxRetriesPerRequestError" ||
    error.name === "ClusterAllFailedError" ||
    CONNECTION_FAILURES.has(error.message) ||
    UNAVAILABLE_PREFIXES.some((prefix) => error.message.startsWith(prefix)) ||
    (typeof code === "string" && SOCKET_ERROR_CODES.has(code))
  );
}

/**
 * Whether the broker's Redis connections are up, from their own events: a connection is lost
 * from `close` until it is `ready` again. A connection still making its first connect counts as
 * up — its commands wait in ioredis's queue, bounded by the command timeout.
 */
export class RedisHealth {
  readonly #lost = new Set<string>();
  readonly #onLost = new Set<() => void>();

  constructor(connections: Record<string, RedisClient>, logger?: Logger) {
    for (const [name, client] of Object.entries(connections)) {
      let reported = false;
      const lose = () => {
        const wasUp = this.#lost.size === 0;
        this.#lost.add(name);
        if (wasUp) for (const listener of this.#onLost) listener();
      };
      if (client.status === "close" || client.status === "end" || client.status === "reconnecting") lose();
      client.on("close", lose);
      client.on("end", lose);
      client.on("ready", () => {
        if (this.#lost.delete(name) && reported)
          logger?.warn("redis connection is back", { connection: name });
        reported = false;
      });
      // ioredis reports every failed reconnect; one line per outage and connection is enough.
      client.on("error", (error: Error) => {
        if (reported) return;
        reported = true;
        logger?.warn("redis connection failed; answering 503 until it is back", {
          connection: name,
          error: error.message,
        });
      });
    }
  }

  /** Every connection is up (or still making its first connect). */
  get up(): boolean {
    return this.#lost.size === 0;
  }

  /** Calls `listener` each time the first connection is lost; returns the unsubscribe. */
  onLost(listener: () => void): () => void {
    this.#onLost.add(listener);
    return () => this.#onLost.delete(listener);
  }
}

/**
 * Fails closed and fast while Redis is unreachable. A request arriving then gets 503
 * `unavailable` at once, without touching Redis. A request already in flight when a
 * connection drops gets 503 after `graceMs` if it has not answered and Redis is still gone —
 * BullMQ's connection waits for Redis forever, so an enqueue would otherwise hang the client.
 * The handler may still finish later; its answer is then dropped (see the error middleware).
 */
export function failFastWhileRedisDown(
  health: RedisHealth,
  respond: (res: Response, error: UnavailableError) => void,
  graceMs = 500,
): RequestHandler {
  return (_req, res, next) => {
    if (!health.up) {
      next(new UnavailableError());
      return;
    }
    const unsubscribe = health.onLost(() => {
      setTimeout(() => {
        if (!res.headersSent && !health.up) respond(res, new UnavailableError());
      }, graceMs).unref();
    });
    res.once("close", unsubscribe);
    next();
  };
}
