import { isTransientNetworkCode, redactSecrets } from "../adapter-error-text.ts";
import { AdapterError } from "../types.ts";

/**
 * SQLSTATE classes (first two characters) that describe the request, the configuration or the
 * broker's permissions: retrying cannot help. 42 holds both syntax errors and 42501
 * insufficient_privilege; 28 a wrong broker password; 3D a missing database; 2B objects that
 * still depend on a role (it owns something in another database).
 */
const PERMANENT_SQLSTATE_CLASSES = new Set(["0A", "22", "23", "28", "2B", "3D", "3F", "42", "44"]);

/** SQLSTATEs that mean "the role is not there": revoking it has already had its effect. */
const UNDEFINED_ROLE = new Set(["42704"]);

/** A failed PostgreSQL call; `sqlState` lets callers tell "already gone" from other failures. */
export class PostgresAdapterError extends AdapterError {
  /** The server's SQLSTATE, when the server answered. */
  readonly sqlState: string | undefined;

  constructor(message: string, options: { permanent: boolean; sqlState?: string }) {
    super(message, { permanent: options.permanent });
    this.sqlState = options.sqlState;
  }
}

/** Whether the server said the role does not exist. */
export function isUndefinedRole(error: unknown): boolean {
  return error instanceof PostgresAdapterError && UNDEFINED_ROLE.has(error.sqlState ?? "");
}

/**
 * Maps a `pg` failure to an {@link AdapterError}. Connection errors, timeouts, server
 * shutdowns, lock and serialisation failures are transient; permission, syntax and
 * configuration errors are permanent. The original error is not attached as `cause`: keep
 * whatever it carries (parameters, connection details) out of logs.
 */
export function toAdapterError(error: unknown, action: string, secrets: readonly string[]): AdapterError {
  if (error instanceof AdapterError) return error;
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  const text = redactSecrets(typeof message === "string" ? message : String(error), secrets);
  if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) {
    const permanent = PERMANENT_SQLSTATE_CLASSES.has(code.slice(0, 2));
    return new PostgresAdapterError(`PostgreSQL ${action} failed (SQLSTATE ${code}): ${text}`, {
      permanent,
      sqlState: code,
    });
  }
  if (isTransientNetworkCode(code)) {
    return new PostgresAdapterError(`PostgreSQL ${action} failed: ${code} (server unreachable)`, {
      permanent: false,
    });
  }
  // Pool connection timeouts, "Connection terminated unexpectedly", query read timeouts and
  // anything unforeseen: may clear up on retry.
  return new PostgresAdapterError(`PostgreSQL ${action} failed: ${text}`, { permanent: false });
}
