import { createHash, randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { exportJWK, generateKeyPair } from "jose";
import { TestIssuer } from "../test/helpers/identity.ts";
import { call, expectCall, pool } from "./client.ts";
import { type BenchProcess, type BenchRun, freePort, tail, waitFor } from "./processes.ts";

/** Resource every lease of the benchmark is minted from (the `jwt` adapter). */
export const RESOURCE = "api";
/** How long agent tokens, tasks and the config's token age last: longer than any run. */
const LIFETIME_SECONDS = 4 * 3600;

/** The identities one run shares between both brokers. */
export interface BenchIdentity {
  /** One identity token per agent: agent `i` is `bench:agent-i`. */
  agentTokens: string[];
  operatorToken: string;
}

/** A broker under test, reachable at `url`. */
export interface System {
  readonly name: "jitkey" | "naive";
  readonly url: string;
  /** Milliseconds from spawning its process(es) to the first `/readyz` 200. */
  readonly readyMs: number;
  readonly processes: BenchProcess[];
  stop(): Promise<void>;
}

/**
 * Writes the one config file both brokers read: the same issuer, operator, resource and
 * policy; rate limits high enough that the load is never refused for volume.
 */
export async function prepareConfig(
  run: BenchRun,
  redisUrl: string,
  agents: number,
  logLevel: string,
): Promise<{ file: string; identity: BenchIdentity }> {
  const issuer = await TestIssuer.create("bench");
  const operatorToken = `jkop_bench_${randomBytes(24).toString("base64url")}`;
  const signingKeys = await Promise.all(
    (["ES256", "EdDSA"] as const).map(async (alg) => {
      const { privateKey } = await generateKeyPair(alg, { extractable: true });
      return { ...(await exportJWK(privateKey)), alg, kid: `bench-${alg}` };
    }),
  );
  const keyFile = join(run.dir, "signing-keys.json");
  await writeFile(keyFile, JSON.stringify({ keys: signingKeys }), { mode: 0o600 });
  const config = {
    http: { port: 8080, host: "127.0.0.1" },
    redis: { url: redisUrl, prefix: "jitkey" },
    data: { dir: join(run.dir, "data") },
    signing: { keyFile },
    identity: {
      audience: "jitkey",
      maxTokenAgeSeconds: LIFETIME_SECONDS,
      issuers: [issuer.config()],
    },
    operators: [{ name: "bench", tokenSha256: createHash("sha256").update(operatorToken).digest("hex") }],
    resources: [
      {
        name: RESOURCE,
        adapter: "jwt",
        classification: "internal",
        scopes: ["read"],
        maxTtlSeconds: 86_400,
        owner: "bench",
        options: { audience: "https://api.bench.example" },
      },
    ],
    policies: [
      {
        name: "bench",
        agents: ["bench:*"],
        resources: [RESOURCE],
        scopes: ["read"],
        maxClassification: "internal",
        autoApprove: true,
        maxTtlSeconds: 86_400,
      },
    ],
    tasks: { defaultTtlSeconds: LIFETIME_SECONDS, maxTtlSeconds: 86_400 },
    limits: { agentRequestsPerMinute: 100_000_000, failedAuthPerMinute: 100_000_000 },
    log: { level: logLevel },
  };
  const file = join(run.dir, "config.json");
  await writeFile(file, JSON.stringify(config, null, 2));
  const agentTokens = await Promise.all(
    Array.from({ length: agents }, (_, i) =>
      issuer.token(`agent-${i}`, { expiresInSeconds: LIFETIME_SECONDS }),
    ),
  );
  return { file, identity: { agentTokens, operatorToken } };
}

async function waitReady(url: string, procs: BenchProcess[], started: number): Promise<number> {
  return waitFor(
    `${url}/readyz`,
    async () => {
      for (const proc of procs)
        if (proc.child.exitCode !== null)
          throw new Error(`${proc.name} exited:\n${await tail(proc.logFile)}`);
      const answer = await call(`${url}/readyz`).catch(() => undefined);
      return answer?.status === 200 ? performance.now() - started : undefined;
    },
    120_000,
    10,
  );
}

function system(
  run: BenchRun,
  name: System["name"],
  url: string,
  readyMs: number,
  procs: BenchProcess[],
): System {
  return {
    name,
    url,
    readyMs,
    processes: procs,
    async stop() {
      await Promise.all(procs.map((proc) => run.stop(proc)));
    },
  };
}

/** Starts the naive reference broker (from source with tsx: it has no build step). */
export async function startNaive(run: BenchRun, configFile: string): Promise<System> {
  const port = await freePort();
  const started = performance.now();
  const proc = run.spawn("naive", process.execPath, ["--import", "tsx", "bench/naive-broker.ts"], {
    JITKEY_CONFIG: configFile,
    PORT: String(port),
  });
  const url = `http://127.0.0.1:${port}`;
  return system(run, "naive", url, await waitReady(url, [proc], started), [proc]);
}

/**
 * Starts jitkey as it runs in production: the built `jitkey serve` and `jitkey worker`
 * (`node dist/broker/main.js`), spawned together; ready when `/readyz` answers 200, which
 * needs the API up and a worker attached.
 */
export async function startJitkey(run: BenchRun, configFile: string): Promise<System> {
  const port = await freePort();
  const env = { JITKEY_CONFIG: configFile, PORT: String(port) };
  const started = performance.now();
  const procs = [
    run.spawn("jitkey-worker", process.execPath, ["dist/broker/main.js", "worker"], env),
    run.spawn("jitkey-serve", process.execPath, ["dist/broker/main.js", "serve"], env),
  ];
  const url = `http://127.0.0.1:${port}`;
  return system(run, "jitkey", url, await waitReady(url, procs, started), procs);
}

/** Each agent declares one task through the broker's API; returns the task ids, by agent. */
export async function createTasks(target: System, identity: BenchIdentity): Promise<string[]> {
  return pool(identity.agentTokens, 50, async (token) => {
    const { task } = await expectCall<{ task: { id: string; status: string } }>(
      201,
      `${target.url}/v1/tasks`,
      {
        token,
        json: {
          goal: "benchmark load",
          resources: [{ resource: RESOURCE, scopes: ["read"] }],
          ttlSeconds: LIFETIME_SECONDS,
        },
      },
    );
    if (task.status !== "approved") throw new Error(`${target.name}: task ${task.id} is ${task.status}`);
    return task.id;
  });
}

/** A minted lease as the benchmark keeps it. */
export interface Minted {
  id: string;
  token: string;
  expiresAt: string;
}

/** Mints one lease through the API; any status but 201 is an error of the benchmark. */
export async function mint(
  target: System,
  agentToken: string,
  taskId: string,
  ttlSeconds: number,
): Promise<Minted> {
  const body = await expectCall<{ lease: { id: string; expiresAt: string }; credential: { token: string } }>(
    201,
    `${target.url}/v1/tasks/${taskId}/leases`,
    { token: agentToken, json: { resource: RESOURCE, ttlSeconds } },
  );
  return { id: body.lease.id, token: body.credential.token, expiresAt: body.lease.expiresAt };
}
