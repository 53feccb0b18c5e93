import { randomBytes } from "node:crypto";
import pg from "pg";
import { redactSecrets } from "../adapter-error-text.ts";
import { requireScopeMappings } from "../scope-mappings.ts";
import type {
  AdapterError,
  AdapterFactory,
  AdapterHealth,
  CredentialAdapter,
  IssuedCredential,
  IssueRequest,
  OrphanSweepContext,
  RenewRequest,
  RevokeRequest,
} from "../types.ts";
import { renderTemplate } from "./grant-templates.ts";
import { leaseRoleComment, leaseRoleName, parseLeaseRoleComment } from "./lease-roles.ts";
import { isUndefinedRole, PostgresAdapterError, toAdapterError } from "./postgres-errors.ts";
import { PostgresAdapterOptions } from "./postgres-options.ts";
import { scramSha256Verifier } from "./scram-verifier.ts";

/**
 * First key of the advisory locks that serialise issue, renewal and revocation of one role
 * ("jkey"); the second is `hashtext(role)`. Advisory locks are per database, as is the pool.
 */
const LOCK_NAMESPACE = 0x6a6b6579;

/**
 * Second key of the lock every GRANT batch and DROP OWNED takes. Two transactions changing the
 * ACL of the same schema or table at once fail with "tuple concurrently updated" (PostgreSQL
 * updates the object's catalogue row in place), so issues and revocations on one database take
 * turns for those few statements, across every broker process.
 */
const ACL_LOCK_KEY = 0;

/** How long `pg_terminate_backend` waits for each session to exit. */
const TERMINATE_WAIT_MS = 5_000;

/** The privileges a sequence has (`aclexplode` names), the only words put into a REVOKE unquoted. */
const SEQUENCE_PRIVILEGES = new Set(["USAGE", "SELECT", "UPDATE"]);

const quoteIdent = pg.escapeIdentifier;
const quoteLiteral = pg.escapeLiteral;

/** Runs a template through the extended query protocol, which refuses several statements in one. */
function singleStatement(text: string): pg.QueryConfig {
  // `queryMode` is a pg option its type definitions lack.
  return { text, queryMode: "extended" } as pg.QueryConfig;
}

/** The agent's view of the server: host, port and database as the connection string names them, unless overridden. */
function agentTarget(options: PostgresAdapterOptions): { host: string; port: number; database: string } {
  const url = new URL(options.connectionString);
  return {
    host: options.host ?? url.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: options.port ?? (url.port ? Number(url.port) : 5432),
    database: options.database ?? decodeURIComponent(url.pathname.slice(1)),
  };
}

/**
 * PostgreSQL logins, one role per lease.
 *
 * Issue, in one transaction: `CREATE ROLE "jk_<lease id>" LOGIN PASSWORD <SCRAM verifier>
 * VALID UNTIL <lease end>`, a COMMENT naming the lease, `GRANT <role> TO CURRENT_USER` (so the
 * broker may later end its sessions and drop what it owns without being a superuser), then the
 * granted scopes' templates. A failure anywhere leaves nothing. Handle: the role name.
 *
 * Revoke: NOLOGIN, terminate its sessions, `REASSIGN OWNED` to the broker, `DROP OWNED`,
 * `DROP ROLE`. Both act on the broker's database only; see docs/postgres.md.
 */
export const createPostgresAdapter: AdapterFactory = (rawOptions, context): CredentialAdapter => {
  const options = PostgresAdapterOptions.parse(rawOptions ?? {});
  requireScopeMappings(context.scopes, options.grants, "grants");
  const { clock, logger, resource } = context;
  const target = agentTarget(options);
  const brokerUrl = new URL(options.connectionString);
  /** What never appears in an error or log line, whatever the driver or server echoes. */
  const brokerSecrets = [
    options.connectionString,
    brokerUrl.password,
    decodeURIComponent(brokerUrl.password),
  ];
  const reassignTo = options.reassignOwnedTo ? quoteIdent(options.reassignOwnedTo) : "CURRENT_USER";

  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.poolSize,
    connectionTimeoutMillis: options.connectTimeoutMs,
    statement_timeout: options.statementTimeoutMs,
    // A client-side backstop for a server that stops answering altogether.
    query_timeout: options.statementTimeoutMs + TERMINATE_WAIT_MS,
    idleTimeoutMillis: 30_000,
    application_name: "jitkey",
  });
  // An idle connection that breaks emits here; without a listener it would crash the process.
  pool.on("error", (error) =>
    logger.warn("postgres: idle broker connection failed", {
      resource,
      error: redactSecrets(error.message, brokerSecrets),
    }),
  );

  let serverDatabase: string | undefined;

  /**
   * Runs `work` on one pooled connection. On any failure the connection is destroyed rather than
   * returned: the server then rolls back an open transaction and frees its advisory locks.
   */
  const withClient = async <T>(
    action: string,
    secrets: readonly string[],
    work: (client: pg.PoolClient) => Promise<T>,
  ): Promise<T> => {
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (error) {
      throw toAdapterError(error, action, secrets);
    }
    try {
      const result = await work(client);
      client.release();
      return result;
    } catch (error) {
      client.release(true);
      throw toAdapterError(error, action, secrets);
    }
  };

  const lockRole = (client: pg.PoolClient, role: string, scope: "transaction" | "session") =>
    client.query(
      scope === "transaction"
        ? "SELECT pg_advisory_xact_lock($1, hashtext($2))"
        : "SELECT pg_advisory_lock($1, hashtext($2))",
      [LOCK_NAMESPACE, role],
    );

  /** Held until the transaction ends; always taken after the role's lock, so the order never inverts. */
  const lockAcls = (client: pg.PoolClient) =>
    client.query("SELECT pg_advisory_xact_lock($1, $2)", [LOCK_NAMESPACE, ACL_LOCK_KEY]);

  /** Terminates every session of the role (by oid, which outlives the name); returns how many would not end. */
  const terminateSessions = async (client: pg.PoolClient, roleOid: string): Promise<number> => {
    const { rows } = await client.query<{ lingering: string }>(
      `SELECT count(*) FILTER (WHERE NOT pg_terminate_backend(pid, $2)) AS lingering
         FROM pg_stat_activity WHERE usesysid = $1 AND pid <> pg_backend_pid()`,
      [roleOid, TERMINATE_WAIT_MS],
    );
    return Number(rows[0]?.lingering ?? 0);
  };

  /**
   * Revokes the role's privileges on sequences one privilege at a time. DROP OWNED revokes them
   * like `REVOKE ALL`, which for a sequence the broker does not own fails with "permission
   * denied for column tableoid" (it reaches column privileges the broker cannot grant).
   */
  const revokeSequencePrivileges = async (client: pg.PoolClient, role: string, roleOid: string) => {
    const { rows } = await client.query<{ sequence: string; privilege: string }>(
      `SELECT format('%I.%I', n.nspname, c.relname) AS sequence, acl.privilege_type AS privilege
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL aclexplode(c.relacl) AS acl
        WHERE c.relkind = 'S' AND acl.grantee = $1::oid`,
      [roleOid],
    );
    for (const { sequence, privilege } of rows) {
      if (!SEQUENCE_PRIVILEGES.has(privilege)) continue;
      await client.query(`REVOKE ${privilege} ON SEQUENCE ${sequence} FROM ${quoteIdent(role)}`);
    }
  };

  /** The templates of the granted scopes, in scope order, each once. */
  const templatesFor = (scopes: readonly string[]): string[] => {
    const templates: string[] = [];
    for (const scope of scopes) {
      const granted = options.grants[scope];
      if (!granted) {
        throw new PostgresAdapterError(`no grants are configured for scope ${scope}`, { permanent: true });
      }
      for (const template of granted) if (!templates.includes(template)) templates.push(template);
    }
    return templates;
  };

  const roleFor = (request: RevokeRequest): string | undefined =>
    request.handle ?? request.references?.role ?? leaseRoleName(options.rolePrefix, request.leaseId);

  /** Ends the role's sessions and drops it with whatever it owns here. Absent is success. */
  const dropLeaseRole = (role: string): Promise<void> =>
    withClient("role revocation", brokerSecrets, async (client) => {
      // Session lock: it must span the NOLOGIN commit, the terminations and the drop transaction.
      await lockRole(client, role, "session");
      const found = await client.query<{ oid: string }>("SELECT oid FROM pg_roles WHERE rolname = $1", [
        role,
      ]);
      const oid = found.rows[0]?.oid;
      if (oid !== undefined) {
        try {
          // Refuse new logins first: from here on the credential is dead even if a later step fails.
          await client.query(`ALTER ROLE ${quoteIdent(role)} NOLOGIN`);
          const lingering = await terminateSessions(client, oid);
          if (lingering > 0) {
            throw new PostgresAdapterError(`${lingering} session(s) of ${role} did not end in time`, {
              permanent: false,
            });
          }
          await client.query("BEGIN");
          await lockAcls(client);
          await revokeSequencePrivileges(client, role, oid);
          await client.query(`REASSIGN OWNED BY ${quoteIdent(role)} TO ${reassignTo}`);
          await client.query(`DROP OWNED BY ${quoteIdent(role)}`);
          await client.query(`DROP ROLE IF EXISTS ${quoteIdent(role)}`);
          await client.query("COMMIT");
          // A login that authenticated just before NOLOGIN committed.
          await terminateSessions(client, oid);
        } catch (error) {
          const mapped = toAdapterError(error, "role revocation", brokerSecrets);
          if (!isUndefinedRole(mapped)) throw ownershipHint(mapped, role);
          // Someone else dropped it meanwhile: the effect revocation wanted.
          await client.query("ROLLBACK").catch(() => undefined);
        }
      }
      await client.query("SELECT pg_advisory_unlock($1, hashtext($2))", [LOCK_NAMESPACE, role]);
    });

  const adapter: CredentialAdapter = {
    kind: "postgres",
    capabilities: { revocation: "backend", renewable: true },

    async issue(request: IssueRequest): Promise<IssuedCredential> {
      const role = leaseRoleName(options.rolePrefix, request.leaseId);
      if (!role) {
        throw new PostgresAdapterError("the lease id does not fit a PostgreSQL role name (63 bytes)", {
          permanent: true,
        });
      }
      const now = clock.now();
      if (request.expiresAt.getTime() <= now) {
        throw new PostgresAdapterError("the lease has already ended", { permanent: true });
      }
      const templates = templatesFor(request.scopes);
      const password = randomBytes(24).toString("base64url");
      const verifier = await scramSha256Verifier(password);
      const secrets = [...brokerSecrets, password, verifier];
      const expiresAt = request.expiresAt.toISOString();

      await withClient("role creation", secrets, async (client) => {
        await client.query("BEGIN");
        await lockRole(client, role, "transaction");
        if (serverDatabase === undefined) {
          const { rows } = await client.query<{ db: string }>("SELECT current_database() AS db");
          serverDatabase = rows[0]?.db ?? target.database;
        }
        const limit = options.connectionLimit ? ` CONNECTION LIMIT ${options.connectionLimit}` : "";
        await client.query(
          `CREATE ROLE ${quoteIdent(role)} LOGIN PASSWORD ${quoteLiteral(verifier)} VALID UNTIL ${quoteLiteral(expiresAt)}${limit}`,
        );
        await client.query(
          `COMMENT ON ROLE ${quoteIdent(role)} IS ${quoteLiteral(leaseRoleComment(request, new Date(now)))}`,
        );
        await client.query(`GRANT ${quoteIdent(role)} TO CURRENT_USER`);
        await lockAcls(client);
        const values = { role, database: serverDatabase, lease_id: request.leaseId, expires_at: expiresAt };
        for (const template of templates) {
          await client.query(singleStatement(renderTemplate(template, values)));
        }
        await client.query("COMMIT");
      });

      const host = target.host.includes(":") ? `[${target.host}]` : target.host;
      const query = options.sslmode ? `?sslmode=${options.sslmode}` : "";
      return {
        credential: {
          type: "postgres",
          username: role,
          password,
          host: target.host,
          port: target.port,
          database: target.database,
          url: `postgresql://${encodeURIComponent(role)}:${encodeURIComponent(password)}@${host}:${target.port}/${encodeURIComponent(target.database)}${query}`,
          expiresAt,
        },
        handle: role,
        references: { role, database: serverDatabase ?? target.database },
      };
    },

    async revoke(request: RevokeRequest): Promise<void> {
      const role = roleFor(request);
      // A lease id that cannot name a role never had one.
      if (role) await dropLeaseRole(role);
    },

    async renew(request: RenewRequest): Promise<{ expiresAt: Date }> {
      const role = roleFor(request);
      if (!role || request.expiresAt.getTime() <= clock.now()) {
        throw new PostgresAdapterError("nothing to renew: no role or an end in the past", {
          permanent: true,
        });
      }
      await withClient("role renewal", brokerSecrets, async (client) => {
        await client.query("BEGIN");
        await lockRole(client, role, "transaction");
        const live = await client.query("SELECT 1 FROM pg_roles WHERE rolname = $1 AND rolcanlogin", [role]);
        if (live.rowCount === 0) {
          throw new PostgresAdapterError(`role ${role} is gone or revoked; it cannot be renewed`, {
            permanent: true,
          });
        }
        // Exactly the requested end: VALID UNTIL never runs past the lease.
        await client.query(
          `ALTER ROLE ${quoteIdent(role)} VALID UNTIL ${quoteLiteral(request.expiresAt.toISOString())}`,
        );
        await client.query("COMMIT");
      });
      return { expiresAt: request.expiresAt };
    },

    async health(): Promise<AdapterHealth> {
      try {
        await withClient("health check", brokerSecrets, (client) => client.query("SELECT 1"));
        return { ok: true };
      } catch (error) {
        return { ok: false, detail: (error as Error).message };
      }
    },

    async sweepOrphans(sweep: OrphanSweepContext): Promise<{ revoked: string[] }> {
      const { rows } = await withClient("orphan search", brokerSecrets, (client) =>
        client.query<{ rolname: string; comment: string | null }>(
          `SELECT rolname, shobj_description(oid, 'pg_authid') AS comment
             FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY rolname`,
          [options.rolePrefix],
        ),
      );
      const revoked: string[] = [];
      for (const row of rows) {
        // Only roles this resource made: other resources and other jitkey deployments may share the server.
        const made = parseLeaseRoleComment(row.comment);
        if (made?.resource !== resource || made.createdAt >= sweep.createdBefore) continue;
        if (await sweep.isHandleOwned(row.rolname)) continue;
        await dropLeaseRole(row.rolname);
        revoked.push(row.rolname);
      }
      return { revoked };
    },

    async close(): Promise<void> {
      await pool.end();
    },
  };
  return adapter;
};

/** Explains the one permanent revocation failure an operator must resolve by hand. */
function ownershipHint(error: AdapterError, role: string): AdapterError {
  if (!(error instanceof PostgresAdapterError) || error.sqlState !== "2BP01") return error;
  return new PostgresAdapterError(
    `role ${role} can no longer log in, but it still owns objects or holds privileges in another ` +
      `database; run REASSIGN OWNED BY / DROP OWNED BY there (${error.message})`,
    { permanent: true, sqlState: error.sqlState },
  );
}
