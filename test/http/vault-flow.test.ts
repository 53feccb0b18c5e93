import { randomBytes } from "node:crypto";
import { expect } from "chai";
import pg from "pg";
import { FakeVaultServer, jitkeyUsernameTemplate } from "../fakes/vault-fake/fake-vault-server.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { dumpPrefix, eventually } from "../helpers/redis.ts";

const POSTGRES_URL = process.env.JITKEY_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const RUN_TAG = randomBytes(3).toString("hex");
const DB_ROLE = `fl${RUN_TAG}`;

/** Logs in to PostgreSQL with a minted credential; rejects once the role is gone. */
async function login(username: string, password: string): Promise<string> {
  const client = new pg.Client({ host: "127.0.0.1", port: 5432, database: "test", user: username, password });
  client.on("error", () => {});
  try {
    await client.connect();
    const { rows } = await client.query<{ who: string }>("SELECT current_user AS who");
    return rows[0]?.who ?? "";
  } finally {
    await client.end().catch(() => {});
  }
}

describe("HTTP flow with a Vault dynamic database resource (fake Vault, real PostgreSQL)", () => {
  let fake: FakeVaultServer;
  let postgres: pg.Pool;
  let t: TestBroker;

  before(async () => {
    fake = await FakeVaultServer.start();
    postgres = new pg.Pool({ connectionString: POSTGRES_URL, max: 2 });
    fake.setPolicy("jitkey-broker", [
      { path: "auth/token/create-orphan", capabilities: ["update"] },
      { path: "auth/token/accessors", capabilities: ["list", "sudo"] },
      { path: "auth/token/lookup-accessor", capabilities: ["update"] },
      { path: "auth/token/revoke-accessor", capabilities: ["update"] },
      { path: "sys/leases/lookup/database/creds/*", capabilities: ["list", "sudo"] },
      { path: "sys/leases/lookup", capabilities: ["update"] },
      { path: "sys/leases/revoke", capabilities: ["update"] },
    ]);
    fake.setPolicy("db-read", [{ path: "database/creds/*", capabilities: ["read"] }]);
    fake.addDatabaseRole({
      name: DB_ROLE,
      connectionString: POSTGRES_URL,
      defaultTtlSeconds: 600,
      maxTtlSeconds: 900,
      creationStatements: [
        `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
      ],
      usernameTemplate: jitkeyUsernameTemplate,
    });
    const brokerToken = fake.createToken({ policies: ["jitkey-broker", "db-read"] });
    t = await startTestBroker({
      name: "vault-flow",
      config: (raw) => {
        const dbResource = (name: string) => ({
          name,
          adapter: "vault",
          classification: "confidential",
          scopes: ["read"],
          maxTtlSeconds: 600,
          owner: "dba-team",
          options: {
            address: fake.address,
            token: brokerToken,
            mode: "dynamic",
            path: `database/creds/${DB_ROLE}`,
            policies: ["db-read"],
          },
        });
        // A second resource on the same Vault path (say, longer TTLs for batch jobs): each one's
        // orphan sweep sees the other's leases under the shared prefix.
        (raw.resources as unknown[]).push(dbResource("app-db"), dbResource("app-db-batch"));
        (raw.policies as unknown[]).push({
          name: "db-readers",
          agents: ["ci:agent-*"],
          resources: ["app-db", "app-db-batch"],
          scopes: ["read"],
          maxClassification: "confidential",
          maxTtlSeconds: 300,
        });
      },
    });
  });

  after(async () => {
    await t?.close();
    await fake?.stop();
    const { rows } = await postgres.query<{ rolname: string }>(
      "SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
      [`%${DB_ROLE}%`],
    );
    for (const { rolname } of rows)
      await postgres.query(`DROP ROLE IF EXISTS "${rolname.replace(/"/g, '""')}"`);
    await postgres.end();
  });

  async function rolesOfRun(): Promise<string[]> {
    const { rows } = await postgres.query<{ rolname: string }>(
      "SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
      [`%${DB_ROLE}%`],
    );
    return rows.map((row) => row.rolname);
  }

  it("mints a working database login for an approved task and drops it when the task completes", async () => {
    const agent = { Authorization: `Bearer ${await t.agentToken("agent-analyst")}` };
    const op = { Authorization: `Bearer ${t.operatorToken}` };
    const created = await t.http
      .post("/v1/tasks")
      .set(agent)
      .send({ goal: "Count yesterday's orders", resources: [{ resource: "app-db", scopes: ["read"] }] })
      .expect(201);
    const taskId = created.body.task.id as string;
    await t.http.post(`/v1/tasks/${taskId}/approve`).set(op).send({}).expect(200);
    const minted = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent)
      .send({ resource: "app-db" })
      .expect(201);
    const { lease, credential } = minted.body;
    expect(lease).to.include({ adapter: "vault", revocable: true, revocation: "backend", status: "active" });
    expect(credential.type).to.equal("vault");
    const { username, password } = credential.data as { username: string; password: string };
    expect(Date.parse(credential.expiresAt)).to.be.at.most(Date.parse(lease.expiresAt));
    expect(await login(username, password)).to.equal(username);

    const stored = await t.broker.leaseStore.get(lease.id);
    expect(stored?.handle, "the Vault lease id is the handle").to.match(
      new RegExp(`^database/creds/${DB_ROLE}/`),
    );

    await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent).expect(200);
    await eventually(async () => (await t.broker.leaseStore.get(lease.id))?.status === "revoked");
    expect(await rolesOfRun()).to.not.include(username);
    const failure = await login(username, password).then(
      () => undefined,
      (error: Error) => error,
    );
    expect(failure?.message).to.match(/does not exist|authentication failed/);

    expect(await dumpPrefix(t.redis, t.prefix)).to.not.include(password);
    expect(t.logs.text()).to.not.include(password);
  });

  it("sweeps a Vault lease that no jitkey lease owns (a crash before the handle was recorded)", async () => {
    const adapter = t.broker.adapters.get("app-db");
    if (!adapter) throw new Error("app-db has no adapter");
    // The adapter issued, then the broker died before recording anything: no jitkey lease exists.
    const orphan = await adapter.issue({
      leaseId: `lse_orphan${RUN_TAG}`,
      taskId: "tsk_lost",
      agentId: "ci:agent-lost",
      resource: "app-db",
      scopes: ["read"],
      expiresAt: new Date(Math.floor(Date.now() / 1000 + 300) * 1000),
    });
    const vaultLeaseId = orphan.handle as string;
    const { username } = orphan.credential.data as { username: string };
    expect(await rolesOfRun()).to.include(username);
    // Past the reconciler's staleness cutoff, as if the crash was a while ago.
    fake.backdateLease(vaultLeaseId, t.config.revocation.staleSeconds + 60);

    const report = await t.broker.reconciler.run();
    expect(report.orphans).to.equal(1);
    expect(fake.liveLeases().map((l) => l.id)).to.not.include(vaultLeaseId);
    expect(await rolesOfRun()).to.not.include(username);
    const audit = await t.broker.audit.query({ limit: 1000 });
    expect(audit.filter((e) => e.type === "orphan_revoked").map((e) => e.handle)).to.include(vaultLeaseId);
  });

  it("never sweeps a live lease of another resource that shares the Vault path", async () => {
    const agent = { Authorization: `Bearer ${await t.agentToken("agent-batch")}` };
    const created = await t.http
      .post("/v1/tasks")
      .set(agent)
      .send({ goal: "Nightly export", resources: [{ resource: "app-db", scopes: ["read"] }] })
      .expect(201);
    const taskId = created.body.task.id as string;
    await t.http
      .post(`/v1/tasks/${taskId}/approve`)
      .set({ Authorization: `Bearer ${t.operatorToken}` })
      .send({})
      .expect(200);
    const minted = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent)
      .send({ resource: "app-db" })
      .expect(201);
    const { username, password } = minted.body.credential.data as { username: string; password: string };
    const vaultLeaseId = (await t.broker.leaseStore.get(minted.body.lease.id))?.handle as string;
    // Old enough for any sweep: only ownership protects it now.
    fake.backdateLease(vaultLeaseId, t.config.revocation.staleSeconds + 60);

    const report = await t.broker.reconciler.run();
    expect(report.orphans).to.equal(0);
    expect(fake.liveLeases().map((l) => l.id)).to.include(vaultLeaseId);
    expect(await login(username, password)).to.equal(username);
    await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent).expect(200);
  });
});
