import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import pg from "pg";
import { freePort } from "../../broker/embedded-redis.ts";
import type { Lease } from "../../broker/leases/lease.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { operatorHeaders } from "../helpers/flows.ts";
import { type BrokerProcess, captureOutput, ROOT, waitForStart } from "../helpers/process.ts";
import { eventually, testRedisUrl } from "../helpers/redis.ts";

const POSTGRES_URL = process.env.JITKEY_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test";
/** Every role this file's leases create starts with it, so leftovers can be found and dropped. */
const ROLE_PREFIX = `jks${randomBytes(3).toString("hex")}_`;
const AGENTS = 6;
const ROUNDS = 8;
const SHORT_TTL_SECONDS = 2;

/** One `jitkey serve` or `jitkey worker` process (test/scale/counted-broker.ts). */
interface Member {
  name: string;
  proc: BrokerProcess;
  url?: string;
}

/** HTTP through the serve processes, as a load balancer would: the next one when one is gone. */
class Api {
  constructor(
    private readonly members: () => Member[],
    private readonly headers: Record<string, string>,
  ) {}

  async call(
    prefer: number,
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; body: Record<string, unknown> }> {
    const serves = this.members().filter((m) => m.url);
    let last: unknown;
    for (let i = 0; i < serves.length; i++) {
      const member = serves[(prefer + i) % serves.length] as Member;
      try {
        const res = await fetch(`${member.url}${path}`, {
          method,
          headers: { ...this.headers, ...(body === undefined ? {} : { "content-type": "application/json" }) },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        return { status: res.status, body: (await res.json()) as Record<string, unknown> };
      } catch (error) {
        // Connection refused or reset: that process is gone; try the next.
        last = error;
      }
    }
    throw last;
  }
}

describe("scale-out: two jitkey serve and two jitkey worker processes on one Redis", function () {
  this.timeout(180_000);
  let t: TestBroker;
  let dir: string;
  let countsKey: string;
  const members: Member[] = [];
  let admin: pg.Client;

  const start = async (name: string, mode: "serve" | "worker", config: string): Promise<Member> => {
    // The log names the public URL, not the port: serve processes get theirs from PORT.
    const port = await freePort();
    const child = spawn(process.execPath, ["--import", "tsx", "test/scale/counted-broker.ts", mode], {
      cwd: ROOT,
      env: {
        ...process.env,
        REDIS_URL: undefined,
        JITKEY_CONFIG: config,
        // A data directory each: each process makes and publishes its own signing keys.
        JITKEY_DATA_DIR: join(dir, name),
        PORT: String(port),
        LOG_LEVEL: "info",
        JITKEY_SCALE_COUNTS: countsKey,
        JITKEY_SCALE_REDIS: testRedisUrl(),
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const proc = captureOutput(child);
    await waitForStart(proc);
    const member = { name, proc, url: mode === "serve" ? `http://127.0.0.1:${port}` : undefined };
    members.push(member);
    return member;
  };
  const serving = () =>
    members.filter((m) => m.proc.child.exitCode === null && m.proc.child.signalCode === null);
  const kill = async (member: Member) => {
    member.proc.child.kill("SIGKILL");
    await member.proc.exited;
    member.url = undefined;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "jitkey-scale-"));
    admin = new pg.Client({ connectionString: POSTGRES_URL });
    await admin.connect();
    t = await startTestBroker({
      name: "scale",
      workers: false,
      config: (raw) => {
        (raw.resources as unknown[]).push({
          name: "pg",
          adapter: "postgres",
          classification: "internal",
          scopes: ["read"],
          maxTtlSeconds: 600,
          owner: "data-team",
          options: {
            connectionString: POSTGRES_URL,
            grants: { read: ["GRANT USAGE ON SCHEMA public TO {{role}}"] },
            rolePrefix: ROLE_PREFIX,
          },
        });
        (raw.policies as unknown[]).unshift({
          name: "scale-auto",
          agents: ["ci:scale-*"],
          resources: ["pg", "demo-api"],
          scopes: ["read"],
          maxClassification: "internal",
          autoApprove: true,
          maxTtlSeconds: 600,
        });
        raw.limits = { agentRequestsPerMinute: 100_000 };
        // Stalled revocations and mints a killed process left are picked up after 4 s.
        raw.revocation = { ...(raw.revocation as object), staleSeconds: 4, reconcileIntervalSeconds: 3600 };
      },
    });
    countsKey = `${t.prefix}:scale-counts`;
    const config = join(dir, "config.json");
    // Behind one address, every broker names the same issuer in what it signs.
    const http = { port: 0, host: "127.0.0.1", publicUrl: "https://jitkey.scale.test" };
    await writeFile(config, JSON.stringify({ ...t.config, http }));
    await Promise.all([
      start("serve-a", "serve", config),
      start("serve-b", "serve", config),
      start("worker-a", "worker", config),
      start("worker-b", "worker", config),
    ]);
  });

  after(async () => {
    for (const member of serving()) {
      member.proc.child.kill("SIGTERM");
      await member.proc.exited;
    }
    const { rows } = await admin.query<{ rolname: string }>(
      "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)",
      [ROLE_PREFIX],
    );
    for (const { rolname } of rows) {
      await admin.query(`DROP OWNED BY ${pg.escapeIdentifier(rolname)}`);
      await admin.query(`DROP ROLE ${pg.escapeIdentifier(rolname)}`);
    }
    await admin.end();
    await t?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("introspects at one serve process what another signed, with no shared key file", async () => {
    const [a, b] = members.filter((m) => m.url) as [Member, Member];
    const agent = new Api(() => [a], { Authorization: `Bearer ${await t.agentToken("scale-keys")}` });
    const task = await agent.call(0, "POST", "/v1/tasks", {
      goal: "read the demo api",
      resources: [{ resource: "demo-api", scopes: ["read"] }],
    });
    expect(task.status).to.equal(201);
    const taskId = (task.body.task as { id: string }).id;
    const minted = await agent.call(0, "POST", `/v1/tasks/${taskId}/leases`, { resource: "demo-api" });
    expect(minted.status).to.equal(201);
    const token = (minted.body.credential as { token: string }).token;
    const operator = new Api(() => [b], operatorHeaders(t));
    // A broker re-reads the published keys for a key id it does not know, at most once a
    // second: a process that started within that second of serve-a may need one more second.
    const answer = await eventually(async () => {
      const res = await operator.call(0, "POST", "/v1/introspect", { token });
      return res.body.active === true ? res : undefined;
    }, 5000);
    expect(answer.body).to.include({ active: true, jti: (minted.body.lease as Lease).id });
    const kid = JSON.parse(Buffer.from(token.split(".")[0] as string, "base64url").toString()).kid;
    const jwks = (await (await fetch(`${b.url}/.well-known/jwks.json`)).json()) as {
      keys: { kid: string }[];
    };
    expect(jwks.keys.map((key) => key.kid)).to.include(kid);
    await agent.call(0, "POST", `/v1/tasks/${taskId}/complete`);
  });

  it("loses no lease and revokes none twice at the adapter when one serve and one worker are killed under load", async () => {
    const worker = members.find((m) => m.name === "worker-b") as Member;
    const serve = members.find((m) => m.name === "serve-b") as Member;
    const minted: string[] = [];
    const openTasks: { api: Api; taskId: string }[] = [];
    let rounds = 0;
    let killedInFlight: string[] = [];

    const runAgent = async (n: number) => {
      const api = new Api(serving, { Authorization: `Bearer ${await t.agentToken(`scale-agent-${n}`)}` });
      for (let round = 0; round < ROUNDS; round++) {
        let turn = n + round;
        const task = await api.call(turn++, "POST", "/v1/tasks", {
          goal: "load",
          resources: [{ resource: "pg", scopes: ["read"] }],
          ttlSeconds: 600,
        });
        expect(task.status, JSON.stringify(task.body)).to.equal(201);
        const taskId = (task.body.task as { id: string }).id;
        const leases: string[] = [];
        for (const ttlSeconds of [SHORT_TTL_SECONDS, 300]) {
          const res = await api.call(turn++, "POST", `/v1/tasks/${taskId}/leases`, {
            resource: "pg",
            ttlSeconds,
          });
          // A mint cut off by the kill may have left an issuing lease: the broker must revoke it anyway.
          if (res.status === 201) leases.push((res.body.lease as Lease).id);
          else expect(res.status, JSON.stringify(res.body)).to.be.oneOf([201, 503]);
        }
        minted.push(...leases);
        if (round % 3 === 0 && leases[1]) {
          const released = await api.call(turn++, "DELETE", `/v1/leases/${leases[1]}`);
          expect(released.status).to.be.oneOf([202, 409]);
        }
        if (round % 4 === 3) openTasks.push({ api, taskId });
        else
          expect((await api.call(turn++, "POST", `/v1/tasks/${taskId}/complete`)).status).to.be.oneOf([
            200, 409,
          ]);
        rounds += 1;
      }
    };

    // Kill one worker while it has revocations in flight, and one serve, once the load is well under way.
    const killer = (async () => {
      await eventually(async () => rounds >= (AGENTS * ROUNDS) / 3, 60_000, 20);
      const inFlight = `${countsKey}:inflight:${worker.proc.child.pid}`;
      await eventually(async () => (await t.redis.scard(inFlight)) > 0, 20_000, 2).catch(() => undefined);
      await Promise.all([kill(worker), kill(serve)]);
      // What the dead worker had started and never finished.
      killedInFlight = await t.redis.smembers(inFlight);
    })();
    await Promise.all([...Array.from({ length: AGENTS }, (_, n) => runAgent(n)), killer]);
    for (const { api, taskId } of openTasks)
      expect((await api.call(0, "POST", `/v1/tasks/${taskId}/complete`)).status).to.be.oneOf([200, 409]);

    // Every lease the broker ever wrote — those a killed serve left mid-mint included — ends revoked.
    const allLeases = async () =>
      t.broker.leaseStore.getMany(
        (
          await Promise.all(
            t.broker.keys.shards.map((shard) => t.broker.redis.zrange(shard.allLeases, 0, -1)),
          )
        ).flat(),
      );
    const leases = await eventually(
      async () => {
        const all = (await allLeases()).filter((lease) => lease.resource === "pg");
        return all.every((lease) => lease.status === "revoked") ? all : undefined;
      },
      60_000,
      200,
    );
    const ids = leases.map((lease) => lease.id);
    expect(ids).to.include.members(minted);
    const { rows } = await admin.query("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", [
      ROLE_PREFIX,
    ]);
    expect(rows, "roles left in PostgreSQL").to.deep.equal([]);

    const started = await t.redis.hgetall(`${countsKey}:started`);
    const done = await t.redis.hgetall(`${countsKey}:done`);
    const byKilled = new Set(await t.redis.smembers(`${countsKey}:by:${worker.proc.child.pid}`));
    const calledTwice = ids.filter((id) => Number(started[id] ?? 0) > 1);
    const revokedTwice = ids.filter((id) => Number(done[id] ?? 0) > 1);
    process.stdout.write(
      `      scale-out: ${leases.length} pg leases (${minted.length} answered 201); the killed worker had ` +
        `${killedInFlight.length} revokes in flight; called twice: ${calledTwice.length}, ` +
        `completed twice: ${revokedTwice.length}\n`,
    );
    // Every lease was revoked through the adapter.
    for (const lease of leases) expect(Number(done[lease.id] ?? 0), lease.id).to.be.at.least(1);
    // Revocation is at least once: a lease is revoked again only where the killed worker had
    // taken it and died before recording the outcome — mid-call, or after the adapter answered
    // and before the settle write (then the adapter is asked a second time; it finds nothing).
    // Surviving processes never both revoke one lease.
    for (const id of calledTwice)
      expect(byKilled.has(id), `${id} called twice, not by the killed worker`).to.equal(true);
    expect(calledTwice.filter((id) => Number(started[id]) > 2)).to.deep.equal([]);
    expect(calledTwice).to.include.members(killedInFlight);
  });
});
