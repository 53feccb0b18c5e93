import type { Redis } from "ioredis";
import type { SigningKeyring } from "../../adapters/jwt/signing-keys.ts";
import type { AdapterContext, AdapterLocks } from "../../adapters/types.ts";
import { type Clock, systemClock } from "../../broker/clock.ts";
import { RedisLocks } from "../../broker/locks.ts";
import type { Logger } from "../../broker/logger.ts";
import { createLogger } from "../../broker/logger.ts";
import { uniquePrefix } from "./redis.ts";

/** Locks within one process, for adapter tests that run no Redis. */
export class LocalLocks implements AdapterLocks {
  readonly #tails = new Map<string, Promise<unknown>>();
  async withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(name) ?? Promise.resolve();
    const run = previous.catch(() => undefined).then(fn);
    this.#tails.set(name, run);
    return run;
  }
}

/**
 * The context an adapter factory gets, for adapter tests: a silent logger, the given clock
 * (default the system clock), and Redis locks under a unique prefix when `redis` is given.
 */
export function testAdapterContext(options: {
  resource: string;
  /** The resource's declared scopes; default none (nothing to check at start-up). */
  scopes?: readonly string[];
  signingKeys?: SigningKeyring;
  logger?: Logger;
  clock?: Clock;
  redis?: Redis;
}): AdapterContext {
  const lockPrefix = uniquePrefix("locks");
  return {
    resource: options.resource,
    scopes: options.scopes ?? [],
    issuer: "https://jitkey.test",
    // Only the jwt adapter signs; others never touch the keyring.
    signingKeys: options.signingKeys ?? (undefined as unknown as SigningKeyring),
    logger: options.logger ?? createLogger({ sink: { write: () => undefined } }),
    clock: options.clock ?? systemClock,
    locks: options.redis
      ? new RedisLocks(options.redis, (name) => `${lockPrefix}:lock:${name}`)
      : new LocalLocks(),
  };
}
