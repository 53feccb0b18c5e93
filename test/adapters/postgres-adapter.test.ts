import { randomBytes } from "node:crypto";
import { expect } from "chai";
import pg from "pg";
import { ZodError } from "zod";
import { createPostgresAdapter } from "../../adapters/postgres/postgres-adapter.ts";
import type { PostgresAdapterError } from "../../adapters/postgres/postgres-errors.ts";
import type { CredentialAdapter, IssuedCredential, IssueRequest } from "../../adapters/types.ts";
import { type Clock, ManualClock } from "../../broker/clock.ts";
import { describeAdapterConformance, newTestLeaseId } from "../conformance/adapter-conformance.ts";
import { closedPort, expectAdapterError, scramVerifierMatches } from "../helpers/adapter-assertions.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";

const POSTGRES_URL = process.env.JITKEY_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test";
/** Unique per run: every role, schema and resource name this file creates carries it. */
const TAG = randomBytes(3).toString("hex");
const RESOURCE = `pg-${TAG}`;
const BROKER_ROLE = `jkb_${TAG}`;
const BROKER_PASSWORD = `broker-pw-${randomBytes(12).toString("hex")}`;
const GROUP_ROLE = `jkg_${TAG}`;
/** The fixture schema; its name holds a quote so templates must quote it as the docs say. */
const SCHEMA = `jkt_${TAG}"s`;
const S = pg.escapeIdentifier(SCHEMA);
/** A schema in the other database, writable by everyone, to show per-database ownership. */
const OTHER_SCHEMA = `jko_${TAG}`;

const GRANTS = {
  read: [`GRANT USAGE ON SCHEMA ${S} TO {{role}}`, `GRANT SELECT ON ${S}.readable TO {{role}}`],
  write: [`GRANT USAGE ON SCHEMA ${S} TO {{role}}`, `GRANT INSERT, UPDATE ON ${S}.readable TO {{role}}`],
  reports: [`GRANT ${pg.escapeIdentifier(GROUP_ROLE)} TO {{role}}`],
  create: [`GRANT USAGE, CREATE ON SCHEMA ${S} TO {{role}}`],
  append: [
    `GRANT USAGE ON SCHEMA ${S} TO {{role}}`,
    `GRANT INSERT ON ${S}.journal TO {{role}}`,
    `GRANT USAGE ON SEQUENCE ${S}.journal_id_seq TO {{role}}`,
  ],
};

function urlFor(database: string, user: string, password?: string): string {
  const url = new URL(POSTGRES_URL);
  url.username = encodeURIComponent(user);
  url.password = password ? encodeURIComponent(password) : "";
  url.pathname = `/${database}`;
  return url.toString();
}

const DATABASE = decodeURIComponent(new URL(POSTGRES_URL).pathname.slice(1)) || "test";
const BROKER_URL = urlFor(DATABASE, BROKER_ROLE, BROKER_PASSWORD);

function issueRequest(
  scopes: string[],
  options: { ttlSeconds?: number; leaseId?: string; now?: number } = {},
) {
  const now = options.now ?? Date.now();
  return {
    leaseId: options.leaseId ?? newTestLeaseId(),
    taskId: `tsk_${randomBytes(8).toString("base64url")}`,
    agentId: "test:agent",
    resource: RESOURCE,
    scopes,
    expiresAt: new Date(Math.floor(now / 1000 + (options.ttlSeconds ?? 120)) * 1000),
  } satisfies IssueRequest;
}

/** Connects as the credential (through its `url`), or rejects with the server's error. */
async function loginAs(credential: IssuedCredential["credential"], database?: string): Promise<pg.Client> {
  const url = new URL(String(credential.url));
  if (database) url.pathname = `/${database}`;
  const client = new pg.Client({ connectionString: url.toString(), connectionTimeoutMillis: 5000 });
  // A session the server terminates emits here; the tests observe it through failed queries.
  client.on("error", () => undefined);
  await client.connect();
  return client;
}

async function sqlStateOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (error) {
    return (error as { code?: string }).code;
  }
  return undefined;
}

describe("postgres adapter (real PostgreSQL)", () => {
  let admin: pg.Pool;
  let otherDbAdmin: pg.Pool;
  const open: CredentialAdapter[] = [];

  const adapter = (extra: Record<string, unknown> = {}, clock?: Clock, resource = RESOURCE) => {
    const created = createPostgresAdapter(
      { connectionString: BROKER_URL, grants: GRANTS, ...extra },
      testAdapterContext({ resource, ...(clock ? { clock } : {}) }),
    );
    open.push(created);
    return created;
  };

  /** Roles whose name contains the lease id, from the catalogue. */
  async function rolesOf(leaseId: string): Promise<string[]> {
    const { rows } = await admin.query<{ rolname: string }>(
      "SELECT rolname FROM pg_roles WHERE strpos(rolname, $1) > 0",
      [leaseId],
    );
    return rows.map((row) => row.rolname);
  }

  before(async () => {
    admin = new pg.Pool({ connectionString: POSTGRES_URL, max: 3 });
    otherDbAdmin = new pg.Pool({
      connectionString: urlFor("postgres", new URL(POSTGRES_URL).username),
      max: 1,
    });
    const broker = pg.escapeIdentifier(BROKER_ROLE);
    await admin.query(`CREATE ROLE ${broker} LOGIN CREATEROLE PASSWORD ${pg.escapeLiteral(BROKER_PASSWORD)}`);
    await admin.query(`CREATE ROLE ${pg.escapeIdentifier(GROUP_ROLE)} NOLOGIN`);
    // PostgreSQL 16+ lets a CREATEROLE role grant only memberships it holds WITH ADMIN OPTION.
    await admin.query(`GRANT ${pg.escapeIdentifier(GROUP_ROLE)} TO ${broker} WITH ADMIN OPTION`);
    await admin.query(`CREATE SCHEMA ${S}`);
    await admin.query(`CREATE TABLE ${S}.readable (id int PRIMARY KEY, note text)`);
    await admin.query(`INSERT INTO ${S}.readable VALUES (1, 'one'), (2, 'two')`);
    await admin.query(`CREATE TABLE ${S}.hidden (id int)`);
    await admin.query(`CREATE TABLE ${S}.reports (id int)`);
    await admin.query(`INSERT INTO ${S}.reports VALUES (42)`);
    await admin.query(`GRANT SELECT ON ${S}.reports TO ${pg.escapeIdentifier(GROUP_ROLE)}`);
    // The broker hands out only what it holds WITH GRANT OPTION; it holds nothing on "hidden".
    await admin.query(`GRANT USAGE, CREATE ON SCHEMA ${S} TO ${broker} WITH GRANT OPTION`);
    await admin.query(`GRANT SELECT, INSERT, UPDATE ON ${S}.readable TO ${broker} WITH GRANT OPTION`);
    await admin.query(`CREATE TABLE ${S}.journal (id serial PRIMARY KEY, note text)`);
    await admin.query(`GRANT INSERT ON ${S}.journal TO ${broker} WITH GRANT OPTION`);
    await admin.query(`GRANT USAGE ON SEQUENCE ${S}.journal_id_seq TO ${broker} WITH GRANT OPTION`);
    const other = pg.escapeIdentifier(OTHER_SCHEMA);
    await otherDbAdmin.query(`CREATE SCHEMA ${other}`);
    await otherDbAdmin.query(`GRANT USAGE, CREATE ON SCHEMA ${other} TO PUBLIC`);
  });

  after(async () => {
    await Promise.allSettled(open.map((created) => created.close?.()));
    // Every per-lease role this run made, whatever a failed test left.
    const { rows } = await admin.query<{ rolname: string }>(
      `SELECT rolname FROM pg_roles
        WHERE strpos(shobj_description(oid, 'pg_authid'), $1) > 0 OR strpos(rolname, $2) > 0`,
      [`"resource":"pg-${TAG}`, TAG],
    );
    const roles = rows
      .map((row) => row.rolname)
      .filter((role) => role !== BROKER_ROLE && role !== GROUP_ROLE);
    const cleaner = await admin.connect();
    try {
      for (const role of [...roles, BROKER_ROLE]) {
        const id = pg.escapeIdentifier(role);
        await otherDbAdmin.query(`DROP OWNED BY ${id}`);
        // A superuser's REVOKE acts as the object's owner and so leaves the privileges the broker
        // granted; only the broker (their grantor) revokes them.
        if (role !== BROKER_ROLE) {
          await cleaner.query(`SET ROLE ${pg.escapeIdentifier(BROKER_ROLE)}`);
          await cleaner.query(`REVOKE USAGE ON SEQUENCE ${S}.journal_id_seq FROM ${id}`);
          await cleaner.query(`DROP OWNED BY ${id}`).catch(() => undefined);
          await cleaner.query("RESET ROLE");
        }
        await cleaner.query(`DROP OWNED BY ${id}`);
        await cleaner.query(`DROP ROLE IF EXISTS ${id}`);
      }
    } finally {
      cleaner.release();
    }
    await admin.query(`DROP SCHEMA IF EXISTS ${S} CASCADE`);
    await admin.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(GROUP_ROLE)}`);
    await otherDbAdmin.query(`DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(OTHER_SCHEMA)} CASCADE`);
    await Promise.all([admin.end(), otherDbAdmin.end()]);
  });

  describeAdapterConformance("postgres", async () => ({
    adapter: adapter(),
    resource: RESOURCE,
    scopes: ["read"],
    // The role name is the handle by design; the password (and the url holding it) must not be.
    publicFields: ["username", "host", "database"],
    findCreated: rolesOf,
  }));

  describe("issue", () => {
    it("creates a login that reads what its scope grants and nothing more", async () => {
      const issued = await adapter().issue(issueRequest(["read"]));
      const session = await loginAs(issued.credential);
      try {
        const { rows } = await session.query(`SELECT note FROM ${S}.readable ORDER BY id`);
        expect(rows.map((row) => row.note)).to.deep.equal(["one", "two"]);
        expect(await sqlStateOf(session.query(`INSERT INTO ${S}.readable VALUES (3, 'x')`))).to.equal(
          "42501",
        );
        expect(await sqlStateOf(session.query(`SELECT * FROM ${S}.hidden`))).to.equal("42501");
        expect(await sqlStateOf(session.query(`SELECT * FROM ${S}.reports`))).to.equal("42501");
        expect(await sqlStateOf(session.query(`CREATE TABLE ${S}.mine (id int)`))).to.equal("42501");
        expect(await sqlStateOf(session.query(`CREATE ROLE ${pg.escapeIdentifier(`x_${TAG}`)}`))).to.equal(
          "42501",
        );
      } finally {
        await session.end();
      }
    });

    it("returns the documented credential: username, password, host, port, database, url, expiresAt", async () => {
      const request = issueRequest(["read"]);
      const issued = await adapter().issue(request);
      const url = new URL(POSTGRES_URL);
      expect(issued.credential).to.deep.include({
        type: "postgres",
        username: `jk_${request.leaseId}`,
        host: url.hostname,
        port: Number(url.port || 5432),
        database: DATABASE,
        expiresAt: request.expiresAt.toISOString(),
      });
      expect(issued.credential.password).to.be.a("string").with.length.at.least(32);
      const agentUrl = new URL(String(issued.credential.url));
      expect(decodeURIComponent(agentUrl.username)).to.equal(`jk_${request.leaseId}`);
      expect(decodeURIComponent(agentUrl.password)).to.equal(issued.credential.password);
      expect(issued.handle).to.equal(`jk_${request.leaseId}`);
      expect(issued.references).to.deep.equal({ role: `jk_${request.leaseId}`, database: DATABASE });
    });

    it("tells the agent the configured host, port, database and sslmode instead", async () => {
      const issued = await adapter({
        host: "db.example",
        port: 6432,
        database: "app",
        sslmode: "require",
      }).issue(issueRequest(["read"]));
      expect(issued.credential).to.deep.include({ host: "db.example", port: 6432, database: "app" });
      const url = new URL(String(issued.credential.url));
      expect([url.hostname, url.port, url.pathname, url.search]).to.deep.equal([
        "db.example",
        "6432",
        "/app",
        "?sslmode=require",
      ]);
    });

    it("stores only a SCRAM verifier of the password, VALID UNTIL the lease's end and a comment naming the lease", async () => {
      const request = issueRequest(["read"], { ttlSeconds: 300 });
      const issued = await adapter().issue(request);
      const { rows } = await admin.query(
        `SELECT rolpassword, rolvaliduntil, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin,
                shobj_description(oid, 'pg_authid') AS comment
           FROM pg_authid WHERE rolname = $1`,
        [issued.handle],
      );
      const row = rows[0];
      expect(row.rolpassword).to.match(/^SCRAM-SHA-256\$/);
      expect(scramVerifierMatches(row.rolpassword, String(issued.credential.password))).to.equal(true);
      expect((row.rolvaliduntil as Date).getTime()).to.equal(request.expiresAt.getTime());
      expect([row.rolsuper, row.rolcreaterole, row.rolcreatedb, row.rolcanlogin]).to.deep.equal([
        false,
        false,
        false,
        true,
      ]);
      expect(JSON.parse(row.comment).jitkey).to.include({
        resource: RESOURCE,
        leaseId: request.leaseId,
        taskId: request.taskId,
        agentId: "test:agent",
      });
    });

    it("grants the union of several scopes, group memberships included", async () => {
      const issued = await adapter().issue(issueRequest(["read", "write", "reports"]));
      const session = await loginAs(issued.credential);
      try {
        await session.query(`UPDATE ${S}.readable SET note = note WHERE id = 1`);
        const { rows } = await session.query(`SELECT id FROM ${S}.reports`);
        expect(rows).to.deep.equal([{ id: 42 }]);
      } finally {
        await session.end();
      }
    });

    it("quotes a lease id holding quotes and SQL as one identifier", async () => {
      const leaseId = `lse_q"u'o;te" SUPERUSER --`;
      const issued = await adapter().issue(issueRequest(["read"], { leaseId }));
      expect(issued.handle).to.equal(`jk_${leaseId}`);
      const { rows } = await admin.query("SELECT rolsuper FROM pg_roles WHERE rolname = $1", [
        `jk_${leaseId}`,
      ]);
      expect(rows).to.deep.equal([{ rolsuper: false }]);
      const session = await loginAs(issued.credential);
      try {
        expect((await session.query(`SELECT count(*)::int AS n FROM ${S}.readable`)).rows).to.deep.equal([
          { n: 2 },
        ]);
        expect((await session.query("SELECT current_user AS me")).rows[0].me).to.equal(`jk_${leaseId}`);
      } finally {
        await session.end();
      }
      await adapter().revoke({ leaseId, resource: RESOURCE });
      expect(await rolesOf(leaseId)).to.deep.equal([]);
    });

    it("refuses a scope without grants, creating nothing", async () => {
      const request = issueRequest(["read", "admin"]);
      const error = await expectAdapterError<PostgresAdapterError>(adapter().issue(request));
      expect(error.permanent).to.equal(true);
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("leaves nothing when a grant fails: the role and its grants are one transaction", async () => {
      const broken = adapter({
        grants: { read: [...GRANTS.read, `GRANT SELECT ON ${S}.no_such_table TO {{role}}`] },
      });
      const request = issueRequest(["read"]);
      const error = await expectAdapterError<PostgresAdapterError>(broken.issue(request));
      expect([error.permanent, error.sqlState]).to.deep.equal([true, "42P01"]);
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("maps a grant the broker may not give to a permanent permission error", async () => {
      const denied = adapter({ grants: { read: [`GRANT SELECT ON ${S}.hidden TO {{role}}`] } });
      const request = issueRequest(["read"]);
      const error = await expectAdapterError<PostgresAdapterError>(denied.issue(request));
      expect([error.permanent, error.sqlState]).to.deep.equal([true, "42501"]);
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("runs each template as one statement: a template holding two is refused by the server", async () => {
      const twoStatements = adapter({
        grants: { read: [`GRANT USAGE ON SCHEMA ${S} TO {{role}}; DROP TABLE ${S}.readable`] },
      });
      const request = issueRequest(["read"]);
      const error = await expectAdapterError<PostgresAdapterError>(twoStatements.issue(request));
      expect([error.permanent, error.sqlState]).to.deep.equal([true, "42601"]);
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
      expect((await admin.query(`SELECT count(*)::int AS n FROM ${S}.readable`)).rows[0].n).to.equal(2);
    });

    it("leaves nothing when the broker's connection dies mid-issue, and recovers", async () => {
      // The session kills itself after CREATE ROLE, as a broker crash or network cut would.
      const dying = adapter({
        grants: { read: [...GRANTS.read, "SELECT pg_terminate_backend(pg_backend_pid()) /* {{role}} */"] },
        poolSize: 1,
      });
      const request = issueRequest(["read"]);
      const error = await expectAdapterError<PostgresAdapterError>(dying.issue(request));
      expect(error.permanent).to.equal(false);
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
      expect(await dying.health()).to.deep.equal({ ok: true });
    });

    it("maps a statement timeout to a transient error", async () => {
      const slow = adapter({
        grants: { read: ["SELECT pg_sleep(2) /* {{role}} */"] },
        statementTimeoutMs: 100,
      });
      const request = issueRequest(["read"]);
      const error = await expectAdapterError<PostgresAdapterError>(slow.issue(request));
      expect([error.permanent, error.sqlState]).to.deep.equal([false, "57014"]);
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("refuses a lease that has already ended", async () => {
      const clock = new ManualClock();
      const request = issueRequest(["read"], { now: clock.now(), ttlSeconds: 10 });
      clock.advance(20_000);
      const error = await expectAdapterError<PostgresAdapterError>(adapter({}, clock).issue(request));
      expect(error.permanent).to.equal(true);
    });
  });

  describe("revoke", () => {
    it("ends the open session and refuses new logins", async () => {
      const created = adapter();
      const request = issueRequest(["read"]);
      const issued = await created.issue(request);
      const session = await loginAs(issued.credential);
      const ended = new Promise<void>((resolve) => session.once("end", () => resolve()));
      expect((await session.query("SELECT 1 AS one")).rows).to.deep.equal([{ one: 1 }]);

      await created.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });

      const { rows } = await admin.query(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = $1",
        [issued.handle],
      );
      expect(rows[0].n).to.equal(0);
      await ended;
      expect(
        await session.query("SELECT 1").then(
          () => "answered",
          () => "refused",
        ),
      ).to.equal("refused");
      expect(await sqlStateOf(loginAs(issued.credential))).to.equal("28000");
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("hands what the role created to the broker and drops it", async () => {
      const created = adapter();
      const request = issueRequest(["create"]);
      const issued = await created.issue(request);
      const table = `made_${TAG}`;
      const session = await loginAs(issued.credential);
      await session.query(`CREATE TABLE ${S}.${pg.escapeIdentifier(table)} (id int)`);
      await session.end();

      await created.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });

      const { rows } = await admin.query(
        "SELECT tableowner FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
        [SCHEMA, table],
      );
      expect(rows).to.deep.equal([{ tableowner: BROKER_ROLE }]);
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("revokes sequence privileges the broker granted but does not own", async () => {
      const created = adapter();
      const request = issueRequest(["append"]);
      const issued = await created.issue(request);
      const session = await loginAs(issued.credential);
      await session.query(`INSERT INTO ${S}.journal (note) VALUES ('by the agent')`);
      await session.end();

      await created.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });

      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("fails permanently, with the login already dead, when the role owns objects in another database", async () => {
      const created = adapter();
      const request = issueRequest(["read"]);
      const issued = await created.issue(request);
      const elsewhere = await loginAs(issued.credential, "postgres");
      await elsewhere.query(`CREATE TABLE ${pg.escapeIdentifier(OTHER_SCHEMA)}.stray (id int)`);
      const ended = new Promise<void>((resolve) => elsewhere.once("end", () => resolve()));

      const error = await expectAdapterError<PostgresAdapterError>(
        created.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle }),
      );
      expect([error.permanent, error.sqlState]).to.deep.equal([true, "2BP01"]);
      await ended;
      const { rows } = await admin.query("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", [
        issued.handle,
      ]);
      expect(rows).to.deep.equal([{ rolcanlogin: false }]);

      // What the docs tell an operator to do in the other database; then the retry succeeds.
      await otherDbAdmin.query(`DROP OWNED BY ${pg.escapeIdentifier(String(issued.handle))}`);
      await created.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("removes a role whose lease recorded nothing (crash after commit) by lease id", async () => {
      const request = issueRequest(["read"]);
      await adapter().issue(request);
      // A fresh adapter, as after a restart: only the lease id is known.
      await adapter().revoke({ leaseId: request.leaseId, resource: RESOURCE });
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("survives concurrent issues and duplicate concurrent revocations on a small pool", async () => {
      const created = adapter({ poolSize: 2 });
      const requests = Array.from({ length: 8 }, () => issueRequest(["read", "reports"]));
      const issued = await Promise.all(requests.map((request) => created.issue(request)));
      await Promise.all(
        requests.flatMap((request, index) => {
          const revoke = { leaseId: request.leaseId, resource: RESOURCE, handle: issued[index]?.handle };
          return [created.revoke(revoke), created.revoke(revoke)];
        }),
      );
      for (const request of requests) expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });

    it("leaves nothing behind when a revocation races the issue of the same lease", async () => {
      const created = adapter({ poolSize: 3 });
      const request = issueRequest(["read"]);
      const outcomes = await Promise.allSettled([
        created.issue(request),
        created.revoke({ leaseId: request.leaseId, resource: RESOURCE }),
      ]);
      expect(outcomes.map((outcome) => outcome.status)).to.deep.equal(["fulfilled", "fulfilled"]);
      // The broker revokes a credential that arrives after its lease was revoked; so does this test.
      await created.revoke({ leaseId: request.leaseId, resource: RESOURCE });
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });
  });

  describe("renew", () => {
    it("moves VALID UNTIL to the new end, never further", async () => {
      const created = adapter();
      const request = issueRequest(["read"], { ttlSeconds: 60 });
      const issued = await created.issue(request);
      const newEnd = new Date(request.expiresAt.getTime() + 600_000);
      const renewed = await created.renew?.({ ...request, handle: issued.handle, expiresAt: newEnd });
      expect(renewed?.expiresAt.getTime()).to.equal(newEnd.getTime());
      const { rows } = await admin.query("SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", [
        issued.handle,
      ]);
      expect((rows[0].rolvaliduntil as Date).getTime()).to.equal(newEnd.getTime());
    });

    it("refuses to renew a revoked lease", async () => {
      const created = adapter();
      const request = issueRequest(["read"]);
      const issued = await created.issue(request);
      await created.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
      const error = await expectAdapterError<PostgresAdapterError>(
        created.renew?.({ ...request, handle: issued.handle, expiresAt: new Date(Date.now() + 60_000) }) ??
          Promise.resolve(),
      );
      expect(error.permanent).to.equal(true);
      expect(await rolesOf(request.leaseId)).to.deep.equal([]);
    });
  });

  describe("orphan sweep", () => {
    it("drops this resource's roles that no live lease owns and that predate the cut-off", async () => {
      const clock = new ManualClock();
      // Its own resource name, so roles other tests leave are not this sweep's.
      const resource = `pg-${TAG}-sweep`;
      const created = adapter({}, clock, resource);
      const request = (now: number) => ({ ...issueRequest(["read"], { now }), resource });
      const orphan = request(clock.now());
      const owned = request(clock.now());
      const orphanIssued = await created.issue(orphan);
      const ownedIssued = await created.issue(owned);
      clock.advance(5_000);
      const young = request(clock.now());
      await created.issue(young);
      // Another resource's role on the same server, and a hand-made role under the same prefix.
      const neighbour = issueRequest(["read"], { now: clock.now() });
      await adapter({}, clock, `pg-${TAG}-other`).issue({ ...neighbour, resource: `pg-${TAG}-other` });
      const handMade = `jk_handmade_${TAG}`;
      await admin.query(`CREATE ROLE ${pg.escapeIdentifier(handMade)} NOLOGIN`);

      const asked: string[] = [];
      const swept = await created.sweepOrphans?.({
        createdBefore: new Date(clock.now() - 1_000),
        isHandleOwned: async (handle) => {
          asked.push(handle);
          return handle === ownedIssued.handle;
        },
      });
      const revoked = swept?.revoked;

      expect(revoked).to.deep.equal([orphanIssued.handle]);
      expect(asked).to.have.members([orphanIssued.handle, ownedIssued.handle]);
      expect(await rolesOf(orphan.leaseId)).to.deep.equal([]);
      expect(await rolesOf(owned.leaseId)).to.deep.equal([ownedIssued.handle]);
      expect(await rolesOf(young.leaseId)).to.have.length(1);
      expect(await rolesOf(neighbour.leaseId)).to.have.length(1);
      expect(await rolesOf(handMade)).to.deep.equal([handMade]);
      await admin.query(`DROP ROLE ${pg.escapeIdentifier(handMade)}`);
      for (const lease of [owned, young]) await created.revoke({ leaseId: lease.leaseId, resource });
      await adapter({}, clock, `pg-${TAG}-other`).revoke({ leaseId: neighbour.leaseId, resource: RESOURCE });
    });
  });

  describe("options", () => {
    const parseError = (options: Record<string, unknown>): ZodError => {
      try {
        createPostgresAdapter(options, testAdapterContext({ resource: RESOURCE })).close?.();
      } catch (error) {
        expect(error).to.be.instanceOf(ZodError);
        return error as ZodError;
      }
      expect.fail("expected the options to be refused");
    };
    const pathsOf = (error: ZodError) => error.issues.map((issue) => issue.path.join("."));

    for (const [problem, template] of [
      ["an unknown placeholder", "GRANT x TO {{role}} /* {{password}} */"],
      ["no {{role}}", "GRANT SELECT ON t TO PUBLIC"],
      ["a malformed placeholder", "GRANT x TO {{role}"],
      ["a transaction end", "COMMIT /* {{role}} */"],
      ["a transaction end after comments", "-- x\n/* a /* nested */ b */ commit /* {{role}} */"],
      ["a role switch", "SET ROLE postgres /* {{role}} */"],
      ["nothing", "   "],
    ] as const) {
      it(`refuses a grant template with ${problem}, naming the field`, () => {
        const error = parseError({ connectionString: BROKER_URL, grants: { read: [template] } });
        expect(pathsOf(error)).to.deep.equal(["grants.read.0"]);
      });
    }

    it("refuses a scope with no templates and an empty grants map", () => {
      expect(pathsOf(parseError({ connectionString: BROKER_URL, grants: { read: [] } }))).to.deep.equal([
        "grants.read",
      ]);
      expect(pathsOf(parseError({ connectionString: BROKER_URL, grants: {} }))).to.deep.equal(["grants"]);
    });

    it("refuses a connection string that is not a postgres URL without echoing it", () => {
      const secret = "host=db password=hunter2-secret";
      const error = parseError({ connectionString: secret, grants: GRANTS });
      expect(pathsOf(error)).to.deep.equal(["connectionString"]);
      expect(JSON.stringify(error.issues)).to.not.include("hunter2");
    });

    it("reads the connection string from the environment", () => {
      const ref = `JITKEY_TEST_PG_${TAG.toUpperCase()}`;
      process.env[ref] = BROKER_URL;
      try {
        const created = adapter({ connectionString: { env: ref } });
        expect(created.kind).to.equal("postgres");
      } finally {
        delete process.env[ref];
      }
      expect(pathsOf(parseError({ connectionString: { env: ref }, grants: GRANTS }))).to.deep.equal([
        "connectionString",
      ]);
    });

    it("declares backend revocation and renewal", () => {
      expect(adapter().capabilities).to.deep.equal({ revocation: "backend", renewable: true });
    });
  });

  describe("errors", () => {
    it("reports an unreachable server as transient and never shows the broker's password", async () => {
      const url = new URL(BROKER_URL);
      url.port = String(await closedPort());
      const unreachable = adapter({ connectionString: url.toString(), connectTimeoutMs: 2_000 });
      const health = await unreachable.health();
      expect(health.ok).to.equal(false);
      expect(health.detail).to.not.include(BROKER_PASSWORD);
      const error = await expectAdapterError<PostgresAdapterError>(unreachable.issue(issueRequest(["read"])));
      expect(error.permanent).to.equal(false);
      expect(error.message).to.not.include(BROKER_PASSWORD);
      expect(error.cause).to.equal(undefined);
      const revokeError = await expectAdapterError<PostgresAdapterError>(
        unreachable.revoke({ leaseId: newTestLeaseId(), resource: RESOURCE }),
      );
      expect(revokeError.permanent).to.equal(false);
    });

    it("reports a missing database as permanent", async () => {
      const missing = adapter({ connectionString: urlFor(`nodb_${TAG}`, BROKER_ROLE, BROKER_PASSWORD) });
      const error = await expectAdapterError<PostgresAdapterError>(missing.issue(issueRequest(["read"])));
      expect([error.permanent, error.sqlState]).to.deep.equal([true, "3D000"]);
      expect(error.message).to.not.include(BROKER_PASSWORD);
    });

    it("never puts the minted password in an error", async () => {
      // A failing template after CREATE ROLE: the error must name neither password nor verifier.
      const failing = adapter({ grants: { read: [`GRANT SELECT ON ${S}.hidden TO {{role}}`] } });
      const error = await expectAdapterError<PostgresAdapterError>(failing.issue(issueRequest(["read"])));
      expect(error.message).to.not.match(/SCRAM-SHA-256/);
    });
  });
});
