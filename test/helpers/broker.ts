import { randomBytes } from "node:crypto";
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Worker } from "bullmq";
import type { Redis } from "ioredis";
import supertest from "supertest";
import type { CredentialAdapter } from "../../adapters/types.ts";
import { type BrokerHttp, createApp } from "../../broker/app.ts";
import { type Broker, createBroker } from "../../broker/broker.ts";
import type { Clock } from "../../broker/clock.ts";
import { type Config, parseConfig } from "../../broker/config.ts";
import type { DevModeSecrets } from "../../broker/dev-mode.ts";
import { createLogger, type LogSink } from "../../broker/logger.ts";
import { sha256Hex } from "../../broker/operators/principal-tokens.ts";
import { TestIssuer } from "./identity.ts";
import { RecordingAdapter } from "./recording-adapter.ts";
import { deletePrefix, testRedis, testRedisUrl, uniquePrefix } from "./redis.ts";

/** Captures every log line the broker writes, already formatted, for secret scans. */
export class CapturedLogs implements LogSink {
  readonly lines: string[] = [];
  write(line: string): void {
    this.lines.push(line.trimEnd());
  }
  text(): string {
    return this.lines.join("\n");
  }
}

let sharedDataDir: Promise<string> | undefined;
/** One data directory (signing keys) for the whole run: generating keys is not what tests test. */
function dataDir(): Promise<string> {
  sharedDataDir ??= mkdtemp(join(tmpdir(), "jitkey-test-data-"));
  return sharedDataDir;
}

export interface TestBrokerOptions {
  /** Name used in the unique Redis prefix. */
  name: string;
  /** Merged over the default test config before validation. */
  config?: (raw: Record<string, unknown>) => void | Promise<void>;
  /** Start revocation workers in-process (default true). */
  workers?: boolean;
  clock?: Clock;
  /** Reuse a prefix (a second broker over the same state). */
  prefix?: string;
  issuer?: TestIssuer;
  /** Adapters for further resources of `config`, by resource name (adapters under test, on fakes). */
  adapters?: ReadonlyMap<string, CredentialAdapter>;
  /** The broker's Redis, when not the shared one (the `records` adapter stays on the shared one). */
  redisUrl?: string;
  /** Dev-mode extras: with them (and `devMode: true` in the config) the dev routes are mounted. */
  dev?: DevModeSecrets;
  /** Write the config to this file and load it from there, so policy reloads read it again. */
  configFile?: string;
}

/** A broker over real Redis with a unique prefix, a test issuer, operators and adapters. */
export interface TestBroker {
  broker: Broker;
  /** The broker's request listener, as `jitkey serve` runs it: `createServer(t.app)` to listen. */
  app: BrokerHttp;
  http: ReturnType<typeof supertest>;
  prefix: string;
  issuer: TestIssuer;
  operatorToken: string;
  introspectorToken: string;
  /** The `records` resource's adapter (Redis-backed, with switchable failures). */
  recording: RecordingAdapter;
  logs: CapturedLogs;
  redis: Redis;
  worker: Worker | undefined;
  config: Config;
  agentToken(subject?: string): Promise<string>;
  close(options?: { keepKeys?: boolean }): Promise<void>;
}

/** The default test config: a jwt resource, a Redis-backed `records` resource, two rules. */
export function defaultTestConfig(
  issuer: TestIssuer,
  tokens: { operator: string; introspector: string },
): Record<string, unknown> {
  return {
    http: { port: 0, host: "127.0.0.1" },
    identity: { audience: "jitkey", issuers: [issuer.config()] },
    operators: [{ name: "alice", tokenSha256: sha256Hex(tokens.operator) }],
    introspectors: [{ name: "reports-api", tokenSha256: sha256Hex(tokens.introspector) }],
    resources: [
      {
        name: "demo-api",
        adapter: "jwt",
        classification: "internal",
        scopes: ["read", "write"],
        maxTtlSeconds: 900,
        owner: "api-team",
        options: { audience: "https://demo-api.example" },
      },
      {
        name: "records",
        adapter: "jwt",
        classification: "confidential",
        scopes: ["read", "write"],
        maxTtlSeconds: 600,
        owner: "data-team",
        options: { audience: "unused: replaced by the recording adapter" },
      },
    ],
    policies: [
      {
        name: "ci-read-auto",
        agents: ["ci:repo:acme/*"],
        resources: ["demo-api"],
        scopes: ["read"],
        maxClassification: "internal",
        autoApprove: true,
        maxTtlSeconds: 300,
      },
      {
        name: "agents-approval",
        agents: ["ci:agent-*"],
        resources: ["demo-api", "records"],
        scopes: ["read", "write"],
        maxClassification: "confidential",
        autoApprove: false,
        maxTtlSeconds: 600,
      },
    ],
    revocation: {
      attempts: 3,
      backoffMs: 50,
      reconcileIntervalSeconds: 3600,
      staleSeconds: 30,
      retryFailedAfterSeconds: 60,
    },
  };
}

export async function startTestBroker(options: TestBrokerOptions): Promise<TestBroker> {
  const issuer = options.issuer ?? (await TestIssuer.create("ci"));
  const operatorToken = `op-${randomBytes(16).toString("hex")}`;
  const introspectorToken = `rs-${randomBytes(16).toString("hex")}`;
  const prefix = options.prefix ?? uniquePrefix(options.name);
  const raw = defaultTestConfig(issuer, { operator: operatorToken, introspector: introspectorToken });
  raw.redis = { url: options.redisUrl ?? testRedisUrl(), prefix };
  raw.data = { dir: await dataDir() };
  await options.config?.(raw);
  const config = parseConfig(raw, "test config");
  if (options.configFile) await writeFile(options.configFile, JSON.stringify(raw, null, 2));
  const redis = testRedis();
  const recording = new RecordingAdapter(redis, `${prefix}:recording`);
  const logs = new CapturedLogs();
  const logger = createLogger({ level: "debug", sink: logs });
  const broker = await createBroker(config, {
    logger,
    clock: options.clock,
    issuer: "http://jitkey.test",
    adapters: new Map<string, CredentialAdapter>([["records", recording], ...(options.adapters ?? [])]),
    dev: options.dev,
    configPath: options.configFile,
  });
  const worker =
    options.workers === false
      ? undefined
      : await broker.startWorkers({ lockDurationMs: 2000, stalledIntervalMs: 1000 });
  const app = createApp(broker);
  return {
    broker,
    app,
    http: supertest(app),
    prefix,
    issuer,
    operatorToken,
    introspectorToken,
    recording,
    logs,
    redis,
    worker,
    config,
    agentToken: (subject = "repo:acme/app:ref:refs/heads/main") => issuer.token(subject),
    async close(closeOptions = {}) {
      await broker.close();
      if (!closeOptions.keepKeys) await deletePrefix(redis, prefix);
      redis.disconnect();
    },
  };
}
