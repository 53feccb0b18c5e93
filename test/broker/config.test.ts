import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { parse as parseYaml, stringify as toYaml } from "yaml";
import { ConfigError, loadConfigFile, parseConfig } from "../../broker/config.ts";
import { sha256Hex } from "../../broker/operators/principal-tokens.ts";

const ALICE = sha256Hex("alice-operator-token");
const REPORTS = sha256Hex("reports-api-token");

/** The example of API.md's "Config file" section, placeholders filled in. */
const EXAMPLE_YAML = `
http: { port: 8080, host: 127.0.0.1 }
redis: { url: redis://127.0.0.1:6379/0, prefix: jitkey }
identity:
  audience: jitkey
  maxTokenAgeSeconds: 3600
  issuers:
    - name: ci
      issuer: https://token.actions.githubusercontent.com
      jwksUri: https://token.actions.githubusercontent.com/.well-known/jwks
      agentIdClaim: sub
operators:
  - name: alice
    tokenSha256: "${ALICE}"
introspectors:
  - name: reports-api
    tokenSha256: "${REPORTS}"
resources:
  - name: demo-api
    adapter: jwt
    classification: internal
    scopes: [read, write]
    maxTtlSeconds: 900
    options: { audience: https://demo-api.example }
policies:
  - agents: ["ci:repo:acme/*"]
    resources: [demo-api]
    scopes: [read]
    maxClassification: internal
    autoApprove: true
    maxTtlSeconds: 300
`;

type Entry = Record<string, unknown>;

/** The parts of a minimal valid raw config, each a fresh object a test may break. */
interface RawParts {
  issuer: Entry;
  issuers: Entry[];
  operator: Entry;
  resource: Entry;
  resources: Entry[];
  rule: Entry;
}

/** A minimal valid raw config; `change` breaks one field of a fresh copy. */
function validRaw(change: (parts: RawParts) => void = () => {}): Entry {
  const issuer: Entry = { name: "ci", issuer: "https://issuer.test/ci", jwks: { keys: [{ kty: "EC" }] } };
  const operator: Entry = { name: "alice", tokenSha256: ALICE };
  const resource: Entry = {
    name: "demo-api",
    adapter: "jwt",
    classification: "internal",
    scopes: ["read"],
    maxTtlSeconds: 900,
    options: { audience: "https://demo-api.example" },
  };
  const rule: Entry = {
    agents: ["ci:*"],
    resources: ["demo-api"],
    scopes: ["read"],
    maxClassification: "internal",
    maxTtlSeconds: 300,
  };
  const parts: RawParts = { issuer, issuers: [issuer], operator, resource, resources: [resource], rule };
  change(parts);
  return {
    identity: { audience: "jitkey", issuers: parts.issuers },
    operators: [operator],
    resources: parts.resources,
    policies: [rule],
  };
}

/** The ConfigError that parsing `raw` throws. */
function configError(raw: unknown): ConfigError {
  try {
    parseConfig(raw);
  } catch (error) {
    expect(error).to.be.instanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error("expected the config to be rejected");
}

describe("parseConfig", () => {
  it("accepts the API.md example and fills in defaults", () => {
    const config = parseConfig(parseYaml(EXAMPLE_YAML));
    expect(config.http).to.include({ port: 8080, host: "127.0.0.1" });
    expect(config.redis).to.deep.equal({ url: "redis://127.0.0.1:6379/0", prefix: "jitkey", shards: 16 });
    expect(config.identity.issuers[0]).to.include({ name: "ci", agentIdClaim: "sub" });
    expect(config.operators).to.deep.equal([{ name: "alice", tokenSha256: ALICE }]);
    expect(config.introspectors[0]?.name).to.equal("reports-api");
    expect(config.resources[0]).to.include({ name: "demo-api", adapter: "jwt", maxTtlSeconds: 900 });
    expect(config.policies[0]).to.include({ autoApprove: true, maxTtlSeconds: 300 });
    expect(config.identity.clockSkewSeconds).to.equal(30);
    expect(config.limits.agentRequestsPerMinute).to.be.a("number");
    expect(config.devMode).to.equal(false);
  });

  it("defaults autoApprove to false: an operator must approve unless a rule says otherwise", () => {
    expect(parseConfig(validRaw()).policies[0]?.autoApprove).to.equal(false);
  });

  it("rejects an unknown adapter kind, naming resources.0.adapter", () => {
    const raw = validRaw(({ resource }) => {
      resource.adapter = "telepathy";
    });
    expect(configError(raw).message).to.include("resources.0.adapter");
  });

  it("rejects a policy naming an unknown resource, naming the rule's entry", () => {
    const raw = validRaw(({ rule }) => {
      rule.resources = ["demo-api", "ghost-db"];
    });
    const message = configError(raw).message;
    expect(message).to.include("policies.0.resources.1");
    expect(message).to.include("ghost-db");
  });

  it("rejects an issuer with neither jwks nor jwksUri", () => {
    const raw = validRaw(({ issuer }) => {
      delete issuer.jwks;
    });
    expect(configError(raw).message).to.include("identity.issuers.0");
  });

  it("rejects an issuer with both jwks and jwksUri", () => {
    const raw = validRaw(({ issuer }) => {
      issuer.jwksUri = "https://issuer.test/ci/jwks";
    });
    expect(configError(raw).message).to.include("identity.issuers.0");
  });

  it("rejects a tokenSha256 that is not 64 hex characters", () => {
    for (const bad of ["abc", `${ALICE.slice(0, 63)}g`, `${ALICE}00`]) {
      const raw = validRaw(({ operator }) => {
        operator.tokenSha256 = bad;
      });
      expect(configError(raw).message).to.include("operators.0.tokenSha256");
    }
  });

  it("rejects duplicate resource names, naming the second", () => {
    const raw = validRaw(({ resource, resources }) => {
      resources.push({ ...resource });
    });
    expect(configError(raw).message).to.include("resources.1.name");
  });

  it("rejects two issuers with the same iss, which would shadow each other", () => {
    const raw = validRaw(({ issuer, issuers }) => {
      issuers.push({ ...issuer, name: "ci-again" });
    });
    expect(configError(raw).message).to.include("identity.issuers.1.issuer");
  });

  it("rejects a config without identity issuers", () => {
    const raw = validRaw((parts) => {
      parts.issuers = [];
    });
    expect(configError(raw).message).to.include("identity.issuers");
  });
});

describe("loadConfigFile", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "jitkey-config-test-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("returns undefined without JITKEY_CONFIG (dev mode)", async () => {
    expect(await loadConfigFile({})).to.equal(undefined);
  });

  it("reads a YAML file", async () => {
    const path = join(dir, "jitkey.yaml");
    await writeFile(path, EXAMPLE_YAML);
    const config = await loadConfigFile({ JITKEY_CONFIG: path });
    expect(config?.http.port).to.equal(8080);
    expect(config?.resources.map((r) => r.name)).to.deep.equal(["demo-api"]);
  });

  it("reads a JSON file", async () => {
    const path = join(dir, "jitkey.json");
    await writeFile(path, JSON.stringify({ ...validRaw(), http: { port: 9001 } }));
    const config = await loadConfigFile({ JITKEY_CONFIG: path });
    expect(config?.http.port).to.equal(9001);
    expect(config?.operators[0]?.name).to.equal("alice");
  });

  it("applies PORT and REDIS_URL over the file", async () => {
    const path = join(dir, "override.yaml");
    await writeFile(path, EXAMPLE_YAML);
    const config = await loadConfigFile({
      JITKEY_CONFIG: path,
      PORT: "9443",
      REDIS_URL: "redis://cache.internal:6380/2",
    });
    expect(config?.http.port).to.equal(9443);
    expect(config?.http.host).to.equal("127.0.0.1");
    expect(config?.redis.url).to.equal("redis://cache.internal:6380/2");
    expect(config?.redis.prefix).to.equal("jitkey");
  });

  it("rejects a PORT that is not an integer", async () => {
    const path = join(dir, "port.yaml");
    await writeFile(path, EXAMPLE_YAML);
    const error = await loadConfigFile({ JITKEY_CONFIG: path, PORT: "eighty" }).catch((e: unknown) => e);
    expect(error).to.be.instanceOf(ConfigError);
    expect((error as Error).message).to.include("PORT");
  });

  it("rejects a file that is not valid YAML, and a missing file", async () => {
    const path = join(dir, "broken.yaml");
    await writeFile(path, "identity: [unclosed\n  - {");
    expect(await loadConfigFile({ JITKEY_CONFIG: path }).catch((e: unknown) => e)).to.be.instanceOf(
      ConfigError,
    );
    expect(
      await loadConfigFile({ JITKEY_CONFIG: join(dir, "absent.yaml") }).catch((e: unknown) => e),
    ).to.be.instanceOf(ConfigError);
  });

  it("names the file and the field when the content is invalid", async () => {
    const raw = validRaw(({ resource }) => {
      resource.classification = "top-secret";
    });
    const path = join(dir, "invalid.yaml");
    await writeFile(path, toYaml(raw));
    const error = (await loadConfigFile({ JITKEY_CONFIG: path }).catch((e: unknown) => e)) as Error;
    expect(error).to.be.instanceOf(ConfigError);
    expect(error.message).to.include(path);
    expect(error.message).to.include("resources.0.classification");
  });
});

describe("broker process with a bad config file", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "jitkey-config-process-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Runs the entry point on `raw` as a YAML file; resolves its exit code and stderr. */
  async function startWith(raw: unknown, name: string): Promise<{ code: number | null; stderr: string }> {
    const path = join(dir, name);
    await writeFile(path, toYaml(raw));
    return new Promise((resolve) => {
      const child = execFile(
        process.execPath,
        ["--import", "tsx", "broker/main.ts"],
        {
          cwd: process.cwd(),
          env: { ...process.env, JITKEY_CONFIG: path, PORT: "0" },
          timeout: 15_000,
        },
        (_error, _stdout, stderr) => resolve({ code: child.exitCode, stderr: String(stderr) }),
      );
    });
  }

  it("exits non-zero with stderr naming the bad field", async () => {
    const raw = validRaw(({ resource }) => {
      resource.adapter = "telepathy";
    });
    const { code, stderr } = await startWith(raw, "bad.yaml");
    expect(code).to.be.a("number").and.not.equal(0);
    expect(stderr).to.include("resources.0.adapter");
    expect(stderr).to.not.include("    at ");
  });

  it("exits non-zero naming the option an adapter refuses", async () => {
    const raw = validRaw(({ resource }) => {
      resource.options = { audience: "https://demo-api.example", algorithm: "HS256" };
    }) as Record<string, unknown>;
    raw.redis = { url: process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0", prefix: "jktest-config-options" };
    const { code, stderr } = await startWith(raw, "bad-options.yaml");
    expect(code).to.be.a("number").and.not.equal(0);
    expect(stderr).to.include("invalid configuration").and.include("resources.0.options.algorithm");
    expect(stderr).to.not.include("    at ");
  });
});

describe("adapter scope mappings at start-up", () => {
  it("refuses a resource scope the adapter's options say nothing about, naming the field", async () => {
    const { createBroker } = await import("../../broker/broker.ts");
    const { uniquePrefix, testRedisUrl } = await import("../helpers/redis.ts");
    const config = parseConfig({
      redis: { url: testRedisUrl(), prefix: uniquePrefix("scope-map") },
      identity: {
        audience: "jitkey",
        issuers: [{ name: "ci", issuer: "https://ci.test", jwks: { keys: [{ kty: "EC" }] } }],
      },
      resources: [
        {
          name: "orders-db",
          adapter: "postgres",
          classification: "internal",
          scopes: ["read", "write"],
          maxTtlSeconds: 600,
          options: {
            connectionString: "postgres://jitkey@127.0.0.1:5432/test",
            grants: { read: ["GRANT SELECT ON orders TO {{role}}"] },
          },
        },
      ],
    });
    let error: unknown;
    await createBroker(config).catch((e: unknown) => (error = e));
    expect((error as Error).name).to.equal("ConfigError");
    expect((error as Error).message).to.include("resources.0.options.grants.write");
  });
});
