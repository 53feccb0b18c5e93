/**
 * A broker process for crash tests, run as a child:
 * `node --import tsx test/helpers/worker-process.ts` with
 * - `REDIS_URL`, `JITKEY_CHILD_CONFIG` (the parent's validated config as JSON: same prefix);
 * - `JITKEY_CHILD_MODE`:
 *   - `revoke-worker`: starts revocation workers whose adapter never finishes a revoke; prints
 *     `ready`, then `revoking <leaseId>` when a revoke starts;
 *   - `mint`: mints `JITKEY_CHILD_MINTS` leases (default 1) for task `JITKEY_CHILD_TASK_ID` of
 *     agent `JITKEY_CHILD_AGENT_ID`; the adapter creates each artifact, prints `issued <leaseId>`
 *     and then never answers.
 * The parent kills it with SIGKILL at the moment it wants to test. Protocol lines go to
 * stdout; logs go to stderr.
 */

import type { IssuedCredential, IssueRequest, RevokeRequest } from "../../adapters/types.ts";
import { createBroker } from "../../broker/broker.ts";
import { parseConfig } from "../../broker/config.ts";
import { createLogger } from "../../broker/logger.ts";
import { RecordingAdapter } from "./recording-adapter.ts";
import { testRedis } from "./redis.ts";

const never = new Promise<never>(() => {});

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Announces each revoke before waiting on its gate. */
class AnnouncingRevokeAdapter extends RecordingAdapter {
  override async revoke(request: RevokeRequest): Promise<void> {
    say(`revoking ${request.leaseId}`);
    return super.revoke(request);
  }
}

/** Creates the artifact, announces it, then hangs: the process dies before answering. */
class HangingIssueAdapter extends RecordingAdapter {
  override async issue(request: IssueRequest): Promise<IssuedCredential> {
    await super.issue(request);
    say(`issued ${request.leaseId}`);
    return never;
  }
}

async function main(): Promise<void> {
  const mode = process.env.JITKEY_CHILD_MODE;
  const config = parseConfig(JSON.parse(process.env.JITKEY_CHILD_CONFIG ?? "{}"), "child config");
  const logger = createLogger({
    level: "warn",
    sink: process.stderr,
  });
  const namespace = `${config.redis.prefix}:recording`;
  const redis = testRedis();
  const adapter =
    mode === "mint"
      ? new HangingIssueAdapter(redis, namespace)
      : new AnnouncingRevokeAdapter(redis, namespace);
  // A gate that never opens: every revoke this process starts hangs until it is killed.
  adapter.revokeGate = never;
  const broker = await createBroker(config, {
    logger,
    issuer: "http://jitkey.test",
    adapters: new Map([["records", adapter]]),
  });

  if (mode === "revoke-worker") {
    await broker.startWorkers({ lockDurationMs: 1000, stalledIntervalMs: 500 });
    say("ready");
    return;
  }
  if (mode === "mint") {
    const agent = { kind: "agent", id: process.env.JITKEY_CHILD_AGENT_ID ?? "", issuer: "ci" } as const;
    const taskId = process.env.JITKEY_CHILD_TASK_ID ?? "";
    const mints = Number(process.env.JITKEY_CHILD_MINTS ?? "1");
    say("ready");
    for (let i = 0; i < mints; i += 1) {
      broker.leases.mint(agent, taskId, { resource: "records" }).catch((error: Error) => {
        say(`mint failed ${error.message}`);
      });
    }
    return;
  }
  throw new Error(`unknown JITKEY_CHILD_MODE ${mode}`);
}

main().catch((error: Error) => {
  process.stderr.write(`worker-process failed: ${error.stack ?? error.message}\n`);
  process.exit(1);
});
