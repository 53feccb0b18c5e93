import { randomBytes } from "node:crypto";
import { expect } from "chai";
import type { Redis } from "ioredis";
import { FailedAuthLimit } from "../../broker/http/failed-auth.ts";
import { SlidingWindowLimiter } from "../../broker/http/rate-limiter.ts";
import { IdentityRejectedError } from "../../broker/identity/agent-verifier.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { metricSample } from "../helpers/contract.ts";

/** Bytes Redis uses for every key under `prefix` (BullMQ's hash-tagged keys included). */
async function bytesUnder(redis: Redis, prefix: string): Promise<{ bytes: number; keys: string[] }> {
  let bytes = 0;
  const keys: string[] = [];
  for (const pattern of [`${prefix}:*`, `{${prefix}:*`]) {
    let cursor = "0";
    do {
      const [next, batch] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
      cursor = next;
      for (const key of batch) {
        keys.push(key);
        bytes += Number((await redis.call("MEMORY", "USAGE", key, "SAMPLES", "0")) ?? 0);
      }
    } while (cursor !== "0");
  }
  return { bytes, keys };
}

/** A bearer token shaped like a JWT, about `size` bytes, signed by nobody. */
function forgedJwt(size: number): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const header = part({ alg: "ES256", kid: randomBytes(8).toString("hex") });
  const payload = part({
    iss: `https://issuer.evil.example/${"i".repeat(Math.floor(size * 0.7))}`,
    sub: "s".repeat(200),
    aud: "jitkey",
  });
  return `${header}.${payload}.${randomBytes(64).toString("base64url")}`;
}

describe("storage: nobody can make the broker store data without authenticating", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "storage", workers: false });
  });
  after(async () => {
    await t.close();
  });

  it("500 forged 10 KB tokens grow Redis by well under 1 MiB, and the real operator and introspector still get in", async function () {
    this.timeout(60_000);
    const before = await bytesUnder(t.redis, t.prefix);
    const routes = [
      () =>
        t.http.post("/v1/tasks").send({ goal: "g", resources: [{ resource: "demo-api", scopes: ["read"] }] }),
      () => t.http.get("/v1/leases/lse_forged"),
      () => t.http.post("/v1/introspect").type("form").send({ token: "x.y.z" }),
      () => t.http.get("/v1/audit"),
    ];
    const statuses = new Map<number, number>();
    for (let i = 0; i < 500; i++) {
      const token = forgedJwt(10_000);
      expect(token.length).to.be.within(9_000, 12_000);
      const res = await routes[i % routes.length]?.().set("Authorization", `Bearer ${token}`);
      statuses.set(res?.status ?? 0, (statuses.get(res?.status ?? 0) ?? 0) + 1);
    }
    // Sixty failures a minute are answered (and audited) one by one; the rest are refused unread.
    expect(Object.fromEntries(statuses)).to.deep.equal({ 401: 60, 429: 440 });

    const after = await bytesUnder(t.redis, t.prefix);
    const grown = after.bytes - before.bytes;
    process.stdout.write(
      `      Redis grew by ${grown} bytes for 500 forged tokens (${after.keys.length} keys)\n`,
    );
    expect(grown).to.be.below(256 * 1024);

    // The real holders behind the same address are not locked out.
    await t.http.get("/v1/tasks").set("Authorization", `Bearer ${t.operatorToken}`).expect(200);
    const introspected = await t.http
      .post("/v1/introspect")
      .set("Authorization", `Bearer ${t.introspectorToken}`)
      .type("form")
      .send({ token: "x.y.z" })
      .expect(200);
    expect(introspected.body).to.deep.equal({ active: false });
    const agent = await t.agentToken("repo:acme/app:ref:refs/heads/main");
    await t.http
      .post("/v1/tasks")
      .set("Authorization", `Bearer ${agent}`)
      .send({ goal: "still works", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);

    // What was recorded is bounded: no stored string carries the forged issuer.
    const events = await t.broker.audit.query({ limit: 1000 });
    const rejected = events.filter((event) => event.type === "identity_rejected");
    const summaries = events.filter((event) => event.type === "identity_rejected_summary");
    expect(rejected).to.have.length(60);
    expect(summaries.length).to.be.within(1, 2);
    for (const event of [...rejected, ...summaries]) {
      for (const value of Object.values(event)) expect(String(value).length).to.be.at.most(201);
      expect(JSON.stringify(event)).to.not.include("iiiiiiiiii");
    }
    expect(rejected[0]).to.include({ reason: "untrusted issuer", route: "POST /v1/tasks" });
    expect(rejected[0]?.issuerDigest).to.match(/^sha256:[0-9a-f]{16}$/);
    expect(rejected.map((event) => event.route)).to.include("GET /v1/leases/:id");

    const metrics = (await t.http.get("/metrics").expect(200)).text;
    expect(metricSample(metrics, "jitkey_identity_rejected_total")).to.equal(500);
    expect(metricSample(metrics, 'jitkey_denials_total{decision="identity",code="rate_limited"}')).to.equal(
      440,
    );
  });

  it("keys no Redis key, lock or event by a route id the broker could not have made", async () => {
    const agent = { Authorization: `Bearer ${await t.agentToken("agent-storage")}` };
    const before = await bytesUnder(t.redis, t.prefix);
    const long = `tsk_${"a".repeat(8_000)}`;
    const res = await t.http.post(`/v1/tasks/${long}/leases`).set(agent).send({ resource: "records" });
    expect(res.status).to.equal(404);
    expect(res.body.error.code).to.equal("not_found");
    for (const path of [
      `/v1/tasks/${long}`,
      `/v1/tasks/${long}/complete`,
      `/v1/leases/lse_${"b".repeat(8_000)}`,
    ]) {
      expect((await t.http.get(path).set(agent)).status).to.be.oneOf([404]);
    }
    const after = await bytesUnder(t.redis, t.prefix);
    expect(after.keys.filter((key) => key.length > 300)).to.deep.equal([]);
    // Only the agent's own rate-limit counter may have appeared.
    const added = after.keys.filter((key) => !before.keys.includes(key));
    expect(added.every((key) => key.includes(":rate:"))).to.equal(true, added.join(", "));
  });
});

describe("failed-auth limit when failures arrive together", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "storage-race", workers: false });
  });
  after(async () => {
    await t.close();
  });

  it("records one by one exactly the failures it answers 401, even when two read their standing before either is counted", async () => {
    const { redis, keys, audit, metrics, clock } = t.broker;
    const limit = new FailedAuthLimit({
      limiter: new SlidingWindowLimiter(redis, keys, clock),
      redis,
      keys,
      audit,
      metrics,
      clock,
      perMinute: 3,
    });
    const caller = { authorization: undefined, address: "10.9.8.7", route: () => "GET /v1/leases/:id" };
    const fail = async (standing?: Awaited<ReturnType<FailedAuthLimit["standing"]>>) =>
      limit
        .reject(
          caller,
          standing ?? (await limit.standing(caller)),
          new IdentityRejectedError("untrusted issuer"),
        )
        .catch((error: { status: number }) => error.status);
    expect([await fail(), await fail()]).to.deep.equal([401, 401]);
    // Two concurrent requests: both read the standing (2 of 3) before either failure is counted.
    const [first, second] = [await limit.standing(caller), await limit.standing(caller)];
    expect([await fail(first), await fail(second)]).to.deep.equal([401, 429]);
    const events = await audit.query({ limit: 100 });
    const recorded = events.filter(
      (event) => event.type === "identity_rejected" && event.actor === "ip:10.9.8.7",
    );
    expect(recorded).to.have.length(3);
  });
});
