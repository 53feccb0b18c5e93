import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { type EmbeddedRedis, startEmbeddedRedis } from "../../broker/embedded-redis.ts";

/**
 * Mocha global fixture: the suite uses the Redis at REDIS_URL (default the local one on
 * 6379). When none answers there, it starts a private redis-server for the run.
 */
let embedded: EmbeddedRedis | undefined;

export async function mochaGlobalSetup(): Promise<void> {
  const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0";
  if (await answers(url)) {
    process.env.REDIS_URL = url;
    return;
  }
  embedded = await startEmbeddedRedis(await mkdtemp(join(tmpdir(), "jitkey-test-redis-")));
  process.env.REDIS_URL = embedded.url;
  process.stderr.write(`no Redis answered at ${url}; started a private redis-server at ${embedded.url}\n`);
}

export async function mochaGlobalTeardown(): Promise<void> {
  await embedded?.stop();
}

async function answers(url: string): Promise<boolean> {
  const client = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 1000,
  });
  client.on("error", () => {});
  try {
    await client.connect();
    return (await client.ping()) === "PONG";
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}
