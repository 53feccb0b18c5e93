/**
 * The broker's errors. Each has a stable `code` (the contract in API.md) and an HTTP
 * status; the one error middleware turns them into `{"error": {"code", "message"}}`.
 * Messages must never contain a secret.
 */
export class JitkeyError extends Error {
  static readonly code: string = "internal";
  readonly code: string;
  readonly status: number;
  /** Extra fields for the error body, e.g. a denial `reason`. Never secrets. */
  readonly details: Record<string, unknown> | undefined;

  constructor(message: string, status = 500, details?: Record<string, unknown>) {
    super(message);
    this.name = this.constructor.name;
    this.code = (this.constructor as typeof JitkeyError).code;
    this.status = status;
    this.details = details;
  }
}

/**
 * Malformed or invalid input: 400, 413 for a body over the size limit, 415 for a body in an
 * encoding, charset or media type the route does not take, 422 when well-formed but naming
 * unknown things.
 */
export class InvalidRequestError extends JitkeyError {
  static override readonly code = "invalid_request";
  constructor(message: string, details?: Record<string, unknown>, status: 400 | 413 | 415 | 422 = 400) {
    super(message, status, details);
  }
}

/** No credentials, or credentials that do not verify. */
export class UnauthenticatedError extends JitkeyError {
  static override readonly code = "unauthenticated";
  constructor(message = "authentication required") {
    super(message, 401);
  }
}

/** Authenticated, but the wrong principal for this route or record. */
export class ForbiddenError extends JitkeyError {
  static override readonly code = "forbidden";
  constructor(message = "not allowed for this principal") {
    super(message, 403);
  }
}

/** No policy rule allows what was asked. `reason` says which check failed. */
export class PolicyDeniedError extends JitkeyError {
  static override readonly code = "policy_denied";
  readonly reason: string;
  constructor(reason: string) {
    super(`policy denied: ${reason}`, 403, { reason });
    this.reason = reason;
  }
}

export class NotFoundError extends JitkeyError {
  static override readonly code = "not_found";
  constructor(what: string) {
    super(`${what} not found`, 404);
  }
}

/** The task exists but is still pending approval. */
export class TaskNotApprovedError extends JitkeyError {
  static override readonly code = "task_not_approved";
  constructor(taskId: string) {
    super(`task ${taskId} is not approved`, 409);
  }
}

/** The task has ended: completed, denied, expired or revoked. */
export class TaskClosedError extends JitkeyError {
  static override readonly code = "task_closed";
  constructor(taskId: string, status: string) {
    super(`task ${taskId} is ${status}`, 409, { status });
  }
}

/** The lease was revoked (by an operator or the reconciler) while its credential was being issued. */
export class LeaseRevokedError extends JitkeyError {
  static override readonly code = "lease_revoked";
  constructor(leaseId: string) {
    super(`lease ${leaseId} was revoked while it was being issued; request a new one`, 409);
  }
}

/** The lease's backend cannot extend a credential (or the lease is not active any more). */
export class LeaseNotRenewableError extends JitkeyError {
  static override readonly code = "lease_not_renewable";
  constructor(message: string) {
    super(message, 409);
  }
}

export class RateLimitedError extends JitkeyError {
  static override readonly code = "rate_limited";
  readonly retryAfterSeconds: number;
  constructor(retryAfterSeconds: number) {
    super("too many requests", 429, { retryAfterSeconds });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** The adapter's backend failed; nothing was left live. */
export class AdapterUnavailableError extends JitkeyError {
  static override readonly code = "adapter_unavailable";
  constructor(message: string) {
    super(message, 502);
  }
}

/**
 * The broker cannot answer now: Redis is unreachable, or the process is starting or draining.
 * Nothing was decided; the client may retry after `retryAfterSeconds`.
 */
export class UnavailableError extends JitkeyError {
  static override readonly code = "unavailable";
  readonly retryAfterSeconds: number;
  constructor(message = "the broker's store is unreachable; retry shortly", retryAfterSeconds = 1) {
    super(message, 503, { retryAfterSeconds });
    this.retryAfterSeconds = retryAfterSeconds;
  }
}
