import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { Registry } from "prom-client";
import { stringify as toYaml } from "yaml";
import { ManualClock } from "../../broker/clock.ts";
import { parseConfig } from "../../broker/config.ts";
import { PolicyLoadError } from "../../broker/policy/policy-errors.ts";
import {
  configFileSources,
  type PolicyLogger,
  type PolicyReloadEvent,
  PolicyStore,
  pickSources,
} from "../../broker/policy/policy-store.ts";
import { catalogEntry, deniedBy, policyDenial, yamlRule } from "../fixtures/policy/builders.ts";

/** A config file's raw content: the catalog and one rule; `rule` overrides the rule's fields. */
function rawConfig(rule: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  return {
    identity: {
      audience: "jitkey",
      issuers: [{ name: "ci", issuer: "https://issuer.test/ci", jwks: { keys: [{ kty: "EC" }] } }],
    },
    resources: [catalogEntry("api", { options: { audience: "https://api.example" } })],
    policies: [
      yamlRule({ name: "api-rw", agents: ["ci:*"], resources: ["api"], scopes: ["read", "write"], ...rule }),
    ],
    policyFiles: ["policies"],
    ...extra,
  };
}

class LogRecorder implements PolicyLogger {
  readonly entries: { level: string; message: string; meta?: Record<string, unknown> }[] = [];
  info(message: string, meta?: Record<string, unknown>) {
    this.entries.push({ level: "info", message, meta });
  }
  warn(message: string, meta?: Record<string, unknown>) {
    this.entries.push({ level: "warn", message, meta });
  }
  error(message: string, meta?: Record<string, unknown>) {
    this.entries.push({ level: "error", message, meta });
  }
}

/** The next reload the store applies. */
function nextReload(store: PolicyStore): Promise<PolicyReloadEvent> {
  return new Promise((resolve) => {
    const stop = store.onReload((event) => {
      stop();
      resolve(event);
    });
  });
}

describe("PolicyStore", () => {
  const clock = new ManualClock(Date.UTC(2025, 5, 2, 10));
  const agent = { id: "ci:repo:acme/app", claims: {} };
  const request = { resources: [{ resource: "api", scopes: ["write"] }] };
  const task = {
    agentId: agent.id,
    resources: [{ resource: "api", scopes: ["read", "write"] }],
    dataClassification: "internal" as const,
    createdAt: new Date(clock.now() - 60_000).toISOString(),
  };
  const lease = {
    resource: "api",
    scopes: ["write"],
    expiresAt: new Date(clock.now() + 120_000).toISOString(),
  };
  let dir: string;
  let configPath: string;
  let logs: LogRecorder;
  let registry: Registry;
  let store: PolicyStore | undefined;

  async function writeConfig(raw: unknown): Promise<void> {
    await writeFile(configPath, toYaml(raw));
  }

  async function openStore(): Promise<PolicyStore> {
    const config = parseConfig(rawConfig(), "test");
    store = await PolicyStore.open({
      resources: config.resources,
      readSources: configFileSources(configPath, {}),
      initial: pickSources(config),
      baseDir: dir,
      watchFiles: [configPath],
      logger: logs,
      registry,
      clock,
      debounceMs: 20,
    });
    return store;
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "jitkey-policy-store-"));
    configPath = join(dir, "jitkey.yaml");
    await mkdir(join(dir, "policies"));
    await writeFile(
      join(dir, "policies", "base.cedar"),
      '@id("base")\nforbid (principal, action, resource)\nwhen { principal.issuer == "banned" };\n',
    );
    await writeConfig(rawConfig());
    logs = new LogRecorder();
    registry = new Registry();
  });

  afterEach(async () => {
    store?.close();
    store = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it("puts an edited .cedar file in force for the very next decision and tells listeners", async () => {
    const policy = await openStore();
    await policy.watch();
    expect(policy.engine.evaluateTask(agent, request).policyIds).to.deep.equal(["api-rw"]);
    const reloaded = nextReload(policy);
    await writeFile(
      join(dir, "policies", "no-write.cedar"),
      '@id("no-write")\nforbid (principal, action, resource)\nwhen { context.scopes.contains("write") };\n',
    );
    const event = await reloaded;
    expect(event).to.include({ generation: 2, trigger: "file" });
    expect(deniedBy(policyDenial(() => policy.engine.evaluateTask(agent, request)))).to.deep.equal([
      "no-write",
    ]);
    expect(await registry.getSingleMetricAsString("jitkey_policy_generation")).to.match(
      /jitkey_policy_generation 2$/m,
    );
  });

  it("reloads the config file's YAML rules on SIGHUP", async () => {
    const policy = await openStore();
    // Written before the watch starts, so only the signal can pick it up.
    await writeConfig(rawConfig({ scopes: ["read"] }));
    await policy.watch();
    const reloaded = nextReload(policy);
    process.kill(process.pid, "SIGHUP");
    expect(await reloaded).to.include({ generation: 2, trigger: "sighup" });
    expect(policyDenial(() => policy.engine.evaluateTask(agent, request)).reason).to.include("write");
  });

  it("keeps the policy in force when the new one is broken, and logs and counts the rejection", async () => {
    const policy = await openStore();
    let told = 0;
    policy.onReload(() => {
      told += 1;
    });
    await writeFile(
      join(dir, "policies", "typo.cedar"),
      '@id("typo")\nforbid (principal, action, resource)\nwhen { resource.clasification == "restricted" };\n',
    );
    const result = await policy.reload();
    expect(result).to.include({ result: "rejected", generation: 1 });
    expect(result.result === "rejected" ? result.error : "").to.match(/typo\.cedar:3:\d+: .*clasification/);
    expect(policy.engine.generation).to.equal(1);
    expect(policy.engine.evaluateTask(agent, request).policyIds).to.deep.equal(["api-rw"]);
    expect(told).to.equal(0);
    const logged = logs.entries.find(({ level }) => level === "error");
    expect(logged?.meta?.error).to.match(/typo\.cedar:3/);
    const reloads = await registry.getSingleMetricAsString("jitkey_policy_reloads_total");
    expect(reloads)
      .to.match(/result="rejected"} 1$/m)
      .and.match(/result="applied"} 0$/m);

    // A config file that no longer validates is rejected the same way.
    await rm(join(dir, "policies", "typo.cedar"));
    await writeConfig(rawConfig({ maxClassification: "secret" }));
    expect(await policy.reload()).to.include({ result: "rejected", generation: 1 });
  });

  it("gives listeners the engine to re-check live leases the new policy no longer permits", async () => {
    const policy = await openStore();
    expect(policy.engine.stillPermitted(lease, task)).to.deep.include({
      allowed: true,
      policyIds: ["api-rw"],
    });
    const rechecked: ReturnType<PolicyStore["engine"]["stillPermitted"]>[] = [];
    policy.onReload(({ engine }) => {
      rechecked.push(engine.stillPermitted(lease, task));
    });
    await writeConfig(rawConfig({ maxTtlSeconds: 60 }));
    expect(await policy.reload()).to.deep.equal({ result: "applied", generation: 2 });
    expect(rechecked).to.have.length(1);
    expect(rechecked[0]).to.deep.include({ allowed: false, policyIds: [] });
    expect(rechecked[0]?.reason).to.equal("ttlSeconds 120 exceeds the maximum of 60");
  });

  it("watches the files a rejected config names, so fixing them reloads", async () => {
    const policy = await openStore();
    await policy.watch();
    await mkdir(join(dir, "more"));
    await writeFile(join(dir, "more", "extra.cedar"), "forbid (principal, action resource);\n");
    await writeConfig(rawConfig({}, { policyFiles: ["policies", "more"] }));
    // The config change may be picked up by the watch before this reload: either is rejected.
    expect(await policy.reload()).to.include({ result: "rejected", generation: 1 });
    const reloaded = nextReload(policy);
    await writeFile(
      join(dir, "more", "extra.cedar"),
      '@id("extra")\nforbid (principal, action, resource) when { context.scopes.contains("write") };\n',
    );
    expect(await reloaded).to.include({ generation: 2, trigger: "file" });
    expect(deniedBy(policyDenial(() => policy.engine.evaluateTask(agent, request)))).to.deep.equal(["extra"]);
  });

  it("reports a reload that changes nothing as unchanged and tells no listener", async () => {
    const policy = await openStore();
    let told = 0;
    policy.onReload(() => {
      told += 1;
    });
    expect(await policy.reload()).to.deep.equal({ result: "unchanged", generation: 1 });
    expect(told).to.equal(0);
  });

  it("refuses a reload whose rules name a resource the running broker does not have", async () => {
    const policy = await openStore();
    const raw = rawConfig();
    raw.resources.push(catalogEntry("new-api", { options: { audience: "https://new.example" } }));
    raw.policies.push(yamlRule({ agents: ["ci:*"], resources: ["new-api"] }));
    await writeConfig(raw);
    const result = await policy.reload();
    expect(result.result).to.equal("rejected");
    expect(result.result === "rejected" ? result.error : "").to.include("new-api");
  });

  it("applies reloads one at a time, in the order asked", async () => {
    const policy = await openStore();
    await writeConfig(rawConfig({ scopes: ["read"] }));
    const first = policy.reload();
    const second = policy.reload();
    expect(await first).to.deep.equal({ result: "applied", generation: 2 });
    expect(await second).to.deep.equal({ result: "unchanged", generation: 2 });
  });

  it("refuses to start on a broken policy", async () => {
    await writeFile(join(dir, "policies", "broken.cedar"), "forbid (principal, action resource);\n");
    const opened = await openStore().then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(opened).to.be.instanceOf(PolicyLoadError);
    expect((opened as Error).message).to.match(/broken\.cedar:1:\d+/);
  });
});
