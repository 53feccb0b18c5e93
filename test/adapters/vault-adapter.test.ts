import { randomBytes } from "node:crypto";
import { expect } from "chai";
import NodeVault from "node-vault";
import pg from "pg";
import type { CredentialAdapter, IssuedCredential, IssueRequest } from "../../adapters/types.ts";
import { createVaultAdapter } from "../../adapters/vault/vault-adapter.ts";
import { describeAdapterConformance, newTestLeaseId } from "../conformance/adapter-conformance.ts";
import { FakeVaultServer, jitkeyUsernameTemplate } from "../fakes/vault-fake/fake-vault-server.ts";
import {
  capturingLogger,
  closedPort,
  expectAdapterError,
  scramVerifierMatches,
} from "../helpers/adapter-assertions.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";

const POSTGRES_URL = process.env.JITKEY_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const RESOURCE = "vault-db";
/** Unique per run: Vault role names carry it, and so every PostgreSQL role this file creates. */
const RUN_TAG = randomBytes(3).toString("hex");
const DB_ROLE = `ro${RUN_TAG}`;
const SHORT_DB_ROLE = `rc${RUN_TAG}`;
/** The sweep test's own role, so leases other tests leave behind are not under its prefix. */
const SWEEP_DB_ROLE = `sw${RUN_TAG}`;

const BROKER_POLICY = [
  { path: "auth/token/create-orphan", capabilities: ["update"] },
  { path: "auth/token/accessors", capabilities: ["list", "sudo"] },
  { path: "auth/token/lookup-accessor", capabilities: ["update"] },
  { path: "auth/token/revoke-accessor", capabilities: ["update"] },
  { path: "auth/token/renew-accessor", capabilities: ["update"] },
  { path: "sys/leases/lookup/database/creds/*", capabilities: ["list", "sudo"] },
  { path: "sys/leases/lookup", capabilities: ["update"] },
  { path: "sys/leases/renew", capabilities: ["update"] },
  { path: "sys/leases/revoke", capabilities: ["update"] },
] as const;

function vaultAdapter(
  options: Record<string, unknown>,
  logger = capturingLogger().logger,
): CredentialAdapter {
  return createVaultAdapter(options, testAdapterContext({ resource: RESOURCE, logger }));
}

function issueRequest(ttlSeconds = 60, leaseId = newTestLeaseId()): IssueRequest {
  return {
    leaseId,
    taskId: `tsk_${randomBytes(8).toString("base64url")}`,
    agentId: "test:agent",
    resource: RESOURCE,
    scopes: ["read"],
    expiresAt: new Date(Math.floor(Date.now() / 1000 + ttlSeconds) * 1000),
  };
}

/** What Vault makes of a display name: "token-" prefix, anything but [A-Za-z0-9-] becomes "-". */
function vaultDisplayName(leaseId: string): string {
  return `token-${leaseId}`.replace(/[^a-zA-Z0-9-]/g, "-");
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("vault adapter (fake Vault, real PostgreSQL)", () => {
  let fake: FakeVaultServer;
  let postgres: pg.Pool;
  let brokerToken: string;
  const open: CredentialAdapter[] = [];

  const track = (adapter: CredentialAdapter): CredentialAdapter => {
    open.push(adapter);
    return adapter;
  };
  const dynamicOptions = (extra: Record<string, unknown> = {}) => ({
    address: fake.address,
    token: brokerToken,
    mode: "dynamic",
    path: `database/creds/${DB_ROLE}`,
    policies: ["db-read"],
    ...extra,
  });
  const tokenOptions = (extra: Record<string, unknown> = {}) => ({
    address: fake.address,
    token: brokerToken,
    mode: "token",
    policies: ["agent-read"],
    ...extra,
  });

  /** PostgreSQL roles named after a lease (through the per-lease token's display name). */
  async function rolesNamedAfter(leaseId: string): Promise<string[]> {
    const { rows } = await postgres.query<{ rolname: string }>(
      "SELECT rolname FROM pg_roles WHERE strpos(rolname, $1) > 0",
      [vaultDisplayName(leaseId)],
    );
    return rows.map((row) => row.rolname);
  }

  /** Everything live for a lease, looked up in the fake's state and in PostgreSQL. */
  async function findCreated(leaseId: string): Promise<string[]> {
    const tokens = fake.liveTokens().filter((token) => token.meta?.jitkey_lease_id === leaseId);
    const owners = new Set(tokens.map((token) => token.accessor));
    const named = vaultDisplayName(leaseId);
    const leases = fake
      .liveLeases()
      .filter((lease) => owners.has(lease.ownerAccessor) || lease.username.includes(named));
    return [
      ...tokens.map((token) => `vault token ${token.displayName} meta.jitkey_lease_id=${leaseId}`),
      ...leases.map((lease) => `vault lease ${lease.id} for ${leaseId}`),
      ...(await rolesNamedAfter(leaseId)).map((role) => `postgres role ${role} for ${leaseId}`),
    ];
  }

  before(async () => {
    fake = await FakeVaultServer.start();
    postgres = new pg.Pool({ connectionString: POSTGRES_URL, max: 2 });
    fake.setPolicy("jitkey-broker", BROKER_POLICY);
    fake.setPolicy("db-read", [{ path: "database/creds/*", capabilities: ["read"] }]);
    fake.setPolicy("agent-read", [{ path: "secret/data/demo/*", capabilities: ["read"] }]);
    fake.setPolicy("nothing", []);
    // Holding the policies it hands out lets the broker mint child tokens without sudo.
    brokerToken = fake.createToken({ policies: ["jitkey-broker", "db-read", "agent-read", "nothing"] });
    const creation = [
      `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
    ];
    fake.addDatabaseRole({
      name: DB_ROLE,
      connectionString: POSTGRES_URL,
      defaultTtlSeconds: 600,
      maxTtlSeconds: 900,
      creationStatements: creation,
      usernameTemplate: jitkeyUsernameTemplate,
    });
    fake.addDatabaseRole({
      name: SWEEP_DB_ROLE,
      connectionString: POSTGRES_URL,
      defaultTtlSeconds: 600,
      maxTtlSeconds: 900,
      creationStatements: creation,
      usernameTemplate: jitkeyUsernameTemplate,
    });
    fake.addDatabaseRole({
      name: SHORT_DB_ROLE,
      connectionString: POSTGRES_URL,
      defaultTtlSeconds: 30,
      maxTtlSeconds: 90,
      creationStatements: creation,
      usernameTemplate: jitkeyUsernameTemplate,
    });
  });

  after(async () => {
    for (const adapter of open) await adapter.close?.();
    await fake?.stop();
    // Whatever a failed test left: every role of this run carries RUN_TAG in its name.
    const { rows } = await postgres.query<{ rolname: string }>(
      "SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
      [`v-%-__${RUN_TAG}-%`],
    );
    for (const { rolname } of rows)
      await postgres.query(`DROP ROLE IF EXISTS "${rolname.replace(/"/g, '""')}"`);
    await postgres.end();
  });

  describeAdapterConformance("vault (mode dynamic, fake Vault + PostgreSQL)", async () => ({
    adapter: vaultAdapter(dynamicOptions()),
    resource: RESOURCE,
    scopes: ["read"],
    findCreated: (leaseId) => findCreated(leaseId),
  }));

  describeAdapterConformance("vault (mode token, fake Vault)", async () => ({
    adapter: vaultAdapter(tokenOptions()),
    resource: RESOURCE,
    scopes: ["read"],
    findCreated: (leaseId) => findCreated(leaseId),
  }));

  describe("configuration", () => {
    it("rejects options naming the bad field", () => {
      const cases: [Record<string, unknown>, string][] = [
        [{ address: "http://v:8200", mode: "dynamic", path: "database/creds/ro" }, "token"],
        [{ address: "http://v:8200", token: "t", mode: "dynamic" }, "path"],
        [{ address: "http://v:8200", token: "t", mode: "token" }, "policies"],
        [{ address: "http://v:8200", token: "t", mode: "token", policies: ["p"], extra: 1 }, "extra"],
        [{ address: "not a url", token: "t", mode: "token", policies: ["p"] }, "address"],
        [
          { address: "http://v:8200", token: "t", mode: "token", policies: ["p"], wrapTtlSeconds: 0 },
          "wrapTtlSeconds",
        ],
      ];
      for (const [options, field] of cases) {
        expect(() => vaultAdapter(options), field).to.throw(new RegExp(field));
      }
    });

    it("declares backend revocation, and renewal only for dynamic leases", () => {
      expect(track(vaultAdapter(dynamicOptions())).capabilities).to.deep.equal({
        revocation: "backend",
        renewable: true,
      });
      const tokenAdapter = track(vaultAdapter(tokenOptions()));
      expect(tokenAdapter.capabilities).to.deep.equal({ revocation: "backend", renewable: false });
      expect(tokenAdapter.renew).to.equal(undefined);
    });
  });

  describe("mode token", () => {
    it("mints an orphan, non-renewable token named after the lease, with the resource's policies", async () => {
      const adapter = track(vaultAdapter(tokenOptions()));
      const request = issueRequest(60);
      const issued = await adapter.issue(request);
      expect(issued.credential).to.include({ type: "vault-token", address: fake.address });
      const [token] = fake.liveTokens().filter((t) => t.accessor === issued.handle);
      expect(token?.displayName).to.equal(vaultDisplayName(request.leaseId));
      expect(token?.meta).to.deep.equal({
        jitkey_lease_id: request.leaseId,
        jitkey_task_id: request.taskId,
        jitkey_agent_id: request.agentId,
        jitkey_resource: RESOURCE,
      });
      expect(token?.policies).to.deep.equal(["agent-read", "default"]);
      expect(fake.tokenExpiry(issued.handle ?? "")?.getTime()).to.be.at.most(
        request.expiresAt.getTime() + 1000,
      );

      const agent = NodeVault({ endpoint: fake.address, token: issued.credential.token as string });
      const self = await agent.read("auth/token/lookup-self");
      expect(self.data).to.include({ orphan: true, renewable: false });
      await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
      const denied = await agent
        .read("auth/token/lookup-self")
        .catch((error: { response?: { statusCode: number } }) => error);
      expect((denied as { response?: { statusCode: number } }).response?.statusCode).to.equal(403);
    });
  });

  describe("response wrapping", () => {
    it("hands the agent a wrapping token and still revokes the token it wraps by accessor", async () => {
      const adapter = track(vaultAdapter(tokenOptions({ wrapTtlSeconds: 30 })));
      const request = issueRequest(60);
      const issued = await adapter.issue(request);
      expect(issued.credential.type).to.equal("vault-wrapped");
      expect(issued.credential).to.not.have.property("token");
      expect(fake.requests.filter((r) => r.path === "auth/token/create-orphan").at(-1)?.wrapTtl).to.equal(
        "30s",
      );

      const unwrapped = await NodeVault({ endpoint: fake.address, token: "" }).write("sys/wrapping/unwrap", {
        token: issued.credential.wrapToken,
      });
      expect(unwrapped.auth.accessor, "the handle is the wrapped token's accessor").to.equal(issued.handle);
      const agent = NodeVault({ endpoint: fake.address, token: unwrapped.auth.client_token });
      expect((await agent.read("auth/token/lookup-self")).data.meta.jitkey_lease_id).to.equal(
        request.leaseId,
      );
      const again = await NodeVault({ endpoint: fake.address, token: "" })
        .write("sys/wrapping/unwrap", { token: issued.credential.wrapToken })
        .catch((error: Error) => error);
      expect(String((again as Error).message)).to.match(/wrapping token is not valid/);

      await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
      expect(await findCreated(request.leaseId)).to.deep.equal([]);
    });

    it("wraps dynamic secrets and keeps the Vault lease id as the handle", async () => {
      const adapter = track(vaultAdapter(dynamicOptions({ wrapTtlSeconds: 20 })));
      const request = issueRequest(60);
      const issued = await adapter.issue(request);
      expect(issued.credential).to.include({ type: "vault-wrapped", wrappedType: "vault" });
      expect(issued.credential).to.not.have.property("data");
      expect(fake.liveLeases().map((lease) => lease.id)).to.include(issued.handle);
      const unwrapped = await NodeVault({ endpoint: fake.address, token: "" }).write("sys/wrapping/unwrap", {
        token: issued.credential.wrapToken,
      });
      const { username, password } = unwrapped.data as { username: string; password: string };
      expect(username).to.include(vaultDisplayName(request.leaseId));
      const { rows } = await postgres.query<{ rolpassword: string }>(
        "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
        [username],
      );
      expect(scramVerifierMatches(rows[0]?.rolpassword ?? "", password)).to.equal(true);
      await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
      expect(await findCreated(request.leaseId)).to.deep.equal([]);
    });
  });

  describe("real PostgreSQL credentials", () => {
    it("issues a working database login that stops working after revoke", async () => {
      const adapter = track(vaultAdapter(dynamicOptions()));
      const request = issueRequest(60);
      const issued = await adapter.issue(request);
      const { username, password } = issued.credential.data as { username: string; password: string };
      expect(username).to.include(vaultDisplayName(request.leaseId)).and.to.have.length.at.most(63);

      const login = () => {
        const client = new pg.Client({
          host: "127.0.0.1",
          port: 5432,
          database: "test",
          user: username,
          password,
        });
        client.on("error", () => {});
        return client
          .connect()
          .then(() => client.query<{ who: string }>("SELECT current_user AS who"))
          .finally(() => client.end().catch(() => {}));
      };
      expect((await login()).rows[0]?.who).to.equal(username);
      // This server trusts 127.0.0.1, so also prove the password itself is the one PostgreSQL stored.
      const { rows } = await postgres.query<{ rolpassword: string; rolvaliduntil: Date }>(
        "SELECT rolpassword, rolvaliduntil FROM pg_authid WHERE rolname = $1",
        [username],
      );
      expect(scramVerifierMatches(rows[0]?.rolpassword ?? "", password)).to.equal(true);
      expect(scramVerifierMatches(rows[0]?.rolpassword ?? "", `${password}x`)).to.equal(false);
      expect(rows[0]?.rolvaliduntil).to.be.instanceOf(Date);

      await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
      const failure = await login().then(
        () => undefined,
        (error: Error) => error,
      );
      expect(failure?.message).to.match(/does not exist|authentication failed/);
    });

    it("revokes a dynamic lease and its per-lease token by the recorded references, without scanning tokens", async () => {
      const adapter = track(vaultAdapter(dynamicOptions()));
      const request = issueRequest(60);
      const issued = await adapter.issue(request);
      expect(issued.references?.tokenAccessor, "the per-lease token's accessor is kept").to.be.a("string");
      const scansBefore = fake.countRequests("auth/token/accessors");
      await adapter.revoke({
        leaseId: request.leaseId,
        resource: RESOURCE,
        handle: issued.handle,
        references: issued.references,
      });
      expect(await findCreated(request.leaseId)).to.deep.equal([]);
      expect(fake.countRequests("auth/token/accessors") - scansBefore).to.equal(0);
    });

    it("drops the database role when the per-lease token expires with the jitkey lease", async () => {
      const adapter = track(vaultAdapter(dynamicOptions()));
      // Whole-second expiry: 3 s leaves at least 2 s, so the token gets a TTL of at least 1 s.
      const request = issueRequest(3);
      await adapter.issue(request);
      expect(await rolesNamedAfter(request.leaseId)).to.have.length(1);
      await sleep(Math.max(0, request.expiresAt.getTime() - Date.now()) + 300);
      expect(await rolesNamedAfter(request.leaseId)).to.deep.equal([]);
    });
  });

  describe("renewal", () => {
    it("renews the Vault lease and its per-lease token, never past the jitkey lease expiry", async () => {
      const adapter = track(vaultAdapter(dynamicOptions()));
      const request = issueRequest(60);
      const issued = await adapter.issue(request);
      const until = new Date(Date.now() + 120_000);
      const renewed = await adapter.renew?.({ ...request, handle: issued.handle, expiresAt: until });
      expect(renewed?.expiresAt.getTime()).to.be.at.most(until.getTime());
      expect(renewed?.expiresAt.getTime()).to.be.greaterThan(request.expiresAt.getTime());
      const lease = fake.liveLeases().find((l) => l.id === issued.handle);
      expect(lease?.expireAt.getTime()).to.be.at.most(until.getTime());
      expect(lease?.expireAt.getTime()).to.be.greaterThan(request.expiresAt.getTime());
      const [token] = fake.liveTokens().filter((t) => t.meta?.jitkey_lease_id === request.leaseId);
      expect(fake.tokenExpiry(token?.accessor ?? "")?.getTime()).to.be.at.most(until.getTime());
      await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
    });

    it("reports the shorter expiry when Vault caps the renewal at the role's max TTL", async () => {
      const adapter = track(vaultAdapter(dynamicOptions({ path: `database/creds/${SHORT_DB_ROLE}` })));
      const request = issueRequest(20);
      const issuedAt = Date.now();
      const issued = await adapter.issue(request);
      const renewed = await adapter.renew?.({
        ...request,
        handle: issued.handle,
        expiresAt: new Date(Date.now() + 600_000),
      });
      expect(renewed?.expiresAt.getTime()).to.be.at.most(issuedAt + 91_000);
      expect(renewed?.expiresAt.getTime()).to.be.at.least(issuedAt + 80_000);
      await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
    });

    it("refuses to renew without a handle, permanently", async () => {
      const adapter = track(vaultAdapter(dynamicOptions()));
      const error = await expectAdapterError(
        adapter.renew?.({
          leaseId: newTestLeaseId(),
          resource: RESOURCE,
          expiresAt: new Date(Date.now() + 60_000),
        }) ?? Promise.resolve(),
      );
      expect(error.permanent).to.equal(true);
    });
  });

  describe("broker login", () => {
    it("logs in with AppRole, renews its token before expiry and logs in again at the max TTL", async function () {
      this.timeout(10_000);
      const roleId = `role-${randomBytes(6).toString("hex")}`;
      const secretId = `secret-${randomBytes(12).toString("hex")}`;
      fake.addAppRole({
        roleName: "jitkey",
        roleId,
        secretId,
        policies: ["jitkey-broker", "agent-read"],
        tokenTtlSeconds: 1,
        tokenMaxTtlSeconds: 2,
      });
      const { logger, lines } = capturingLogger();
      const adapter = vaultAdapter(tokenOptions({ token: undefined, appRole: { roleId, secretId } }), logger);
      const logins = () => fake.requests.filter((r) => r.path === "auth/approle/login").length;
      const before = logins();
      const first = await adapter.issue(issueRequest(30));
      expect(logins() - before).to.equal(1);
      await sleep(1500);
      // The first token's TTL was 1 s: issuing now proves renew-self extended it.
      const second = await adapter.issue(issueRequest(30));
      expect(logins() - before).to.equal(1);
      expect(fake.countRequests("auth/token/renew-self")).to.be.at.least(1);
      await sleep(1200);
      expect(logins() - before, "a fresh login once renewal hit the max TTL").to.be.at.least(2);
      await adapter.issue(issueRequest(30));
      for (const issued of [first, second]) {
        expect(issued.handle).to.be.a("string");
      }
      await adapter.close?.();
      const afterClose = fake.requests.length;
      await sleep(800);
      expect(fake.requests.length, "no timers after close").to.equal(afterClose);
      const logged = lines.join("\n");
      expect(logged).to.include("logged in with AppRole");
      expect(logged).to.not.include(secretId);
      expect(logged).to.not.match(/hvs\.[A-Za-z0-9]{24}/);
    });

    it("logs in again when renewal is refused", async () => {
      const roleId = `role-${randomBytes(6).toString("hex")}`;
      const secretId = `secret-${randomBytes(12).toString("hex")}`;
      fake.addAppRole({
        roleName: "jitkey",
        roleId,
        secretId,
        policies: ["jitkey-broker", "agent-read"],
        tokenTtlSeconds: 1,
        tokenMaxTtlSeconds: 3600,
      });
      const adapter = track(vaultAdapter(tokenOptions({ token: undefined, appRole: { roleId, secretId } })));
      const logins = () => fake.requests.filter((r) => r.path === "auth/approle/login").length;
      await adapter.issue(issueRequest(30));
      const before = logins();
      fake.injectFault({ path: "auth/token/renew-self", status: 403, errors: ["permission denied"] });
      await sleep(900);
      expect(logins() - before).to.equal(1);
      const issued = await adapter.issue(issueRequest(30));
      expect(issued.credential.type).to.equal("vault-token");
    });

    it("fails permanently, without echoing secrets, when the AppRole secret id is wrong", async () => {
      const adapter = track(
        vaultAdapter(
          tokenOptions({ token: undefined, appRole: { roleId: "nope", secretId: "wrong-secret-id" } }),
        ),
      );
      const error = await expectAdapterError(adapter.issue(issueRequest(30)));
      expect(error.permanent).to.equal(true);
      expect(error.message).to.include("invalid role ID").and.not.include("wrong-secret-id");
      expect((await adapter.health()).ok).to.equal(false);
    });

    it("sends X-Vault-Namespace on every request", async () => {
      const namespaced = await FakeVaultServer.start({ namespace: "team-a" });
      try {
        namespaced.setPolicy("jitkey-broker", BROKER_POLICY);
        namespaced.setPolicy("agent-read", [{ path: "secret/data/demo/*", capabilities: ["read"] }]);
        const token = namespaced.createToken({ policies: ["jitkey-broker", "agent-read"] });
        const options = { address: namespaced.address, token, mode: "token", policies: ["agent-read"] };
        const adapter = track(vaultAdapter({ ...options, namespace: "team-a" }));
        const request = issueRequest(30);
        const issued = await adapter.issue(request);
        expect(issued.credential).to.include({ namespace: "team-a" });
        await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE });
        expect((await adapter.health()).ok).to.equal(true);
        const seen = namespaced.requests.filter((r) => r.path !== "sys/health");
        expect(seen.length).to.be.greaterThan(3);
        for (const record of seen) expect(record.namespace, record.path).to.equal("team-a");

        const outside = track(vaultAdapter(options));
        const error = await expectAdapterError(outside.issue(issueRequest(30)));
        expect(error.permanent).to.equal(true);
      } finally {
        await namespaced.stop();
      }
    });
  });

  describe("error mapping", () => {
    it("treats Vault 5xx as transient", async () => {
      const adapter = track(vaultAdapter(tokenOptions()));
      await adapter.health();
      fake.injectFault({ path: "auth/token/create-orphan", status: 503, errors: ["Vault is sealed"] });
      const error = await expectAdapterError(adapter.issue(issueRequest(30)));
      expect(error.permanent).to.equal(false);
      expect(error.message).to.include("503").and.include("Vault is sealed");
      fake.injectFault({ path: "sys/leases/revoke", status: 500, errors: ["internal error"] });
      const revokeError = await expectAdapterError(
        track(vaultAdapter(dynamicOptions())).revoke({
          leaseId: newTestLeaseId(),
          resource: RESOURCE,
          handle: "database/creds/x/y",
        }),
      );
      expect(revokeError.permanent).to.equal(false);
    });

    it("treats unreachable and slow Vaults as transient", async () => {
      const unreachable = track(
        vaultAdapter(tokenOptions({ address: `http://127.0.0.1:${await closedPort()}` })),
      );
      const refused = await expectAdapterError(unreachable.issue(issueRequest(30)));
      expect(refused.permanent).to.equal(false);
      expect(refused.message).to.include("ECONNREFUSED");

      const slow = track(vaultAdapter(tokenOptions({ requestTimeoutMs: 100 })));
      await slow.health();
      fake.injectFault({ path: "auth/token/create-orphan", delayMs: 400 });
      const timedOut = await expectAdapterError(slow.issue(issueRequest(30)));
      expect(timedOut.permanent).to.equal(false);
    });

    it("treats 403 as permanent, with Vault's text and no token in the message", async () => {
      const adapter = track(vaultAdapter(dynamicOptions({ policies: ["nothing"] })));
      const request = issueRequest(30);
      const error = await expectAdapterError(adapter.issue(request));
      expect(error.permanent).to.equal(true);
      expect(error.message).to.include("permission denied");
      const everything = `${error.message} ${error.stack} ${JSON.stringify(error)} ${String(error.cause)}`;
      expect(everything).to.not.include(brokerToken);
      expect(everything).to.not.match(/hvs\.[A-Za-z0-9]{24}/);
      expect(await findCreated(request.leaseId), "the per-lease token is cleaned up").to.deep.equal([]);

      // Even when Vault's own error text echoes a token, the message does not.
      fake.injectFault({
        path: "auth/token/create-orphan",
        status: 403,
        errors: [`permission denied for ${brokerToken}`],
      });
      const echoed = await expectAdapterError(track(vaultAdapter(tokenOptions())).issue(issueRequest(30)));
      expect(echoed.permanent).to.equal(true);
      expect(echoed.message).to.include("permission denied").and.not.include(brokerToken);
    });

    it("counts 'lease not found' and 'invalid lease' on revoke as revoked", async () => {
      const adapter = track(vaultAdapter(dynamicOptions()));
      for (const text of ["lease not found", "invalid lease ID"]) {
        fake.injectFault({ path: "sys/leases/revoke", status: 400, errors: [text] });
        await adapter.revoke({
          leaseId: newTestLeaseId(),
          resource: RESOURCE,
          handle: `database/creds/${DB_ROLE}/gone`,
        });
      }
      fake.injectFault({ path: "auth/token/revoke-accessor", status: 400, errors: ["invalid accessor"] });
      await track(vaultAdapter(tokenOptions())).revoke({
        leaseId: newTestLeaseId(),
        resource: RESOURCE,
        handle: "gone",
      });
      expect(fake.faultsPending(), "every injected fault was hit").to.equal(0);
    });
  });

  describe("orphan sweep", () => {
    it("revokes unowned leases created before the cutoff, and leaves owned, fresh and foreign ones", async () => {
      const adapter = track(vaultAdapter(dynamicOptions({ path: `database/creds/${SWEEP_DB_ROLE}` })));
      const other = track(vaultAdapter(dynamicOptions({ path: `database/creds/${SHORT_DB_ROLE}` })));
      const owned = await adapter.issue(issueRequest(60));
      const orphanRequest = issueRequest(60);
      const orphan = await adapter.issue(orphanRequest);
      const foreign = await other.issue(issueRequest(60));
      await sleep(20);
      const createdBefore = new Date();
      await sleep(20);
      const fresh = await adapter.issue(issueRequest(60));
      const asked: string[] = [];
      const result = await adapter.sweepOrphans?.({
        createdBefore,
        isHandleOwned: async (handle) => {
          asked.push(handle);
          return handle === owned.handle;
        },
      });
      expect(result?.revoked).to.deep.equal([orphan.handle]);
      expect(asked).to.have.members([owned.handle, orphan.handle]);
      const live = fake.liveLeases().map((lease) => lease.id);
      expect(live).to.include.members([owned.handle, fresh.handle, foreign.handle]);
      expect(live).to.not.include(orphan.handle);
      const orphanRoles = await rolesNamedAfter(orphanRequest.leaseId);
      expect(orphanRoles, "the orphan's database role is dropped").to.deep.equal([]);
      for (const [issuer, issued] of [
        [adapter, owned],
        [adapter, fresh],
        [other, foreign],
      ] as const) {
        await issuer.revoke({ leaseId: newTestLeaseId(), resource: RESOURCE, handle: issued.handle });
      }
      await adapter.revoke({ leaseId: orphanRequest.leaseId, resource: RESOURCE });
    });

    it("sweeps jitkey tokens of this resource in mode token", async () => {
      const adapter = track(vaultAdapter(tokenOptions()));
      const owned = await adapter.issue(issueRequest(60));
      const orphan = await adapter.issue(issueRequest(60));
      await sleep(1100); // token creation_time has one-second resolution
      const result = await adapter.sweepOrphans?.({
        createdBefore: new Date(),
        isHandleOwned: async (handle) => handle !== orphan.handle,
      });
      expect(result?.revoked).to.deep.equal([orphan.handle]);
      const live = fake.liveTokens().map((token) => token.accessor);
      expect(live).to.include(owned.handle).and.not.include(orphan.handle);
    });
  });
});

describe("vault adapter against a real Vault or OpenBao (VAULT_ADDR, VAULT_TOKEN)", () => {
  const address = process.env.VAULT_ADDR;
  const token = process.env.VAULT_TOKEN;
  const dynamicPath = process.env.JITKEY_TEST_VAULT_DYNAMIC_PATH;

  before(function () {
    if (!address || !token) {
      console.log(
        "    skipped: VAULT_ADDR and VAULT_TOKEN are not set (the fake-backed suite above always runs)",
      );
      this.skip();
    }
  });

  /** Tokens whose meta names the lease, and the Vault lease behind a handle, asked of Vault itself. */
  async function findInVault(leaseId: string, issued?: IssuedCredential): Promise<string[]> {
    const admin = NodeVault({ endpoint: address, token, namespace: process.env.VAULT_NAMESPACE });
    const found: string[] = [];
    const listed = await admin.list("auth/token/accessors");
    for (const accessor of listed.data.keys as string[]) {
      const lookup = await admin.write("auth/token/lookup-accessor", { accessor }).catch(() => undefined);
      if (lookup?.data?.meta?.jitkey_lease_id === leaseId)
        found.push(`vault token ${accessor} for ${leaseId}`);
    }
    if (issued?.handle?.includes("/")) {
      const lease = await admin
        .write("sys/leases/lookup", { lease_id: issued.handle })
        .catch(() => undefined);
      if (lease) found.push(`vault lease ${issued.handle} for ${leaseId}`);
    }
    return found;
  }

  const options = (extra: Record<string, unknown>) => ({
    address,
    token,
    ...(process.env.VAULT_NAMESPACE ? { namespace: process.env.VAULT_NAMESPACE } : {}),
    ...extra,
  });

  describeAdapterConformance("vault (mode token, real Vault)", async () => ({
    adapter: vaultAdapter(
      options({ mode: "token", policies: (process.env.JITKEY_TEST_VAULT_POLICIES ?? "default").split(",") }),
    ),
    resource: RESOURCE,
    scopes: ["read"],
    findCreated: findInVault,
  }));

  describe("mode dynamic (JITKEY_TEST_VAULT_DYNAMIC_PATH)", () => {
    before(function () {
      if (!dynamicPath) {
        console.log("    skipped: set JITKEY_TEST_VAULT_DYNAMIC_PATH (e.g. database/creds/jitkey-test)");
        this.skip();
      }
    });
    describeAdapterConformance("vault (mode dynamic, real Vault)", async () => ({
      adapter: vaultAdapter(options({ mode: "dynamic", path: dynamicPath })),
      resource: RESOURCE,
      scopes: ["read"],
      findCreated: findInVault,
    }));
  });
});
