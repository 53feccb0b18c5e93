/**
 * `jitkey serve` / `jitkey worker` for the scale-out test, run as
 * `node --import tsx test/scale/counted-broker.ts serve|worker` with `JITKEY_CONFIG`.
 *
 * It is `broker/main.ts` itself (config file, Redis, signals, listening, workers), with one
 * thing added: every `postgres` adapter the registry loads in this process counts its revoke
 * calls in Redis, so the test can tell a lease revoked once from one revoked twice across
 * processes that it kills. Per lease id, in hashes under `JITKEY_SCALE_COUNTS`:
 * - `<key>:started` — revoke calls that reached the adapter;
 * - `<key>:done` — calls the adapter answered without error (the role is gone);
 * and `<key>:by:<pid>` the leases this process called revoke for, `<key>:inflight:<pid>` those
 * it is revoking right now.
 * The adapter itself — real roles on the real PostgreSQL — is untouched.
 */
import { Redis } from "ioredis";
import { adapterLoaders } from "../../adapters/registry.ts";
import { runServer } from "../../broker/main.ts";

const key = process.env.JITKEY_SCALE_COUNTS ?? "";
if (!key || !process.env.JITKEY_SCALE_REDIS)
  throw new Error("set JITKEY_SCALE_COUNTS and JITKEY_SCALE_REDIS");
const counts = new Redis(process.env.JITKEY_SCALE_REDIS, { maxRetriesPerRequest: null });
const inflight = `${key}:inflight:${process.pid}`;
const mine = `${key}:by:${process.pid}`;

const buildPostgres = await adapterLoaders.postgres();
adapterLoaders.postgres = async () => (options, context) => {
  const adapter = buildPostgres(options, context);
  const revoke = adapter.revoke.bind(adapter);
  adapter.revoke = async (request) => {
    await counts
      .multi()
      .hincrby(`${key}:started`, request.leaseId, 1)
      .sadd(mine, request.leaseId)
      .sadd(inflight, request.leaseId)
      .exec();
    try {
      await revoke(request);
      await counts.hincrby(`${key}:done`, request.leaseId, 1);
    } finally {
      await counts.srem(inflight, request.leaseId);
    }
  };
  return adapter;
};

runServer(process.argv.slice(2));
