/**
 * Errors the jitkey client throws. Every one has a stable `code`: the API's error code for
 * an answer from the broker (`JitkeyApiError` and its subclasses), or a client-side code
 * (`broker_unreachable`, `approval_denied`, `approval_timeout`). Branch on the class or on
 * `code`, never on the message.
 *
 * @example
 * ```ts
 * try {
 *   await client.mint(taskId, "reports-api");
 * } catch (error) {
 *   if (error instanceof PolicyDeniedError) console.error("denied:", error.reason);
 *   else throw error;
 * }
 * ```
 */
export class JitkeyClientError extends Error {
  /** A stable machine-readable code. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = this.constructor.name;
    this.code = code;
  }
}

/** The error body the broker sends: `{"error": {"code", "message", "requestId", ...}}`. */
export interface ApiErrorBody {
  code: string;
  message: string;
  requestId?: string;
  [detail: string]: unknown;
}

/** The broker answered with an error. `code` is the API's code (API.md "Errors"). */
export class JitkeyApiError extends JitkeyClientError {
  /** The HTTP status of the answer. */
  readonly status: number;
  /** The broker's request id, for its logs; absent when the broker sent none. */
  readonly requestId: string | undefined;
  /** Every field of the error body besides code, message and requestId (e.g. a denial `reason`). */
  readonly details: Record<string, unknown>;

  constructor(status: number, body: ApiErrorBody) {
    const { code, message, requestId, ...details } = body;
    super(code, message);
    this.status = status;
    this.requestId = typeof requestId === "string" ? requestId : undefined;
    this.details = details;
  }
}

/** `invalid_request` (400/422): the request was malformed or named unknown things. */
export class InvalidRequestError extends JitkeyApiError {}

/** `unauthenticated` (401): no identity token, or one the broker does not accept. */
export class UnauthenticatedError extends JitkeyApiError {}

/** `forbidden` (403): authenticated as the wrong principal for this route or record. */
export class ForbiddenError extends JitkeyApiError {}

/** `policy_denied` (403): no policy rule allows what was asked. */
export class PolicyDeniedError extends JitkeyApiError {
  /** Which policy check failed, as the broker said. */
  get reason(): string | undefined {
    return typeof this.details.reason === "string" ? this.details.reason : undefined;
  }
}

/** `not_found` (404). */
export class NotFoundError extends JitkeyApiError {}

/** `task_not_approved` (409): the task is still pending. */
export class TaskNotApprovedError extends JitkeyApiError {}

/** `task_closed` (409): the task was completed, denied, expired or revoked. */
export class TaskClosedError extends JitkeyApiError {
  /** The task's status, when known. */
  get taskStatus(): string | undefined {
    return typeof this.details.status === "string" ? this.details.status : undefined;
  }
}

/** `lease_revoked` (409): the lease was revoked while it was being issued; mint again. */
export class LeaseRevokedError extends JitkeyApiError {}

/** `rate_limited` (429). */
export class RateLimitedError extends JitkeyApiError {
  /** Seconds the broker asked the caller to wait, when it said. */
  get retryAfterSeconds(): number | undefined {
    const value = this.details.retryAfterSeconds;
    return typeof value === "number" ? value : undefined;
  }
}

/** `adapter_unavailable` (502): the credential backend failed; nothing was left live. */
export class AdapterUnavailableError extends JitkeyApiError {}

/** `unavailable` (503): the broker cannot serve now (starting, draining, Redis unreachable). */
export class UnavailableError extends JitkeyApiError {}

/** `internal` (500): the broker failed; `requestId` finds it in the broker's logs. */
export class InternalError extends JitkeyApiError {}

const API_ERRORS: Record<string, new (status: number, body: ApiErrorBody) => JitkeyApiError> = {
  invalid_request: InvalidRequestError,
  unauthenticated: UnauthenticatedError,
  forbidden: ForbiddenError,
  policy_denied: PolicyDeniedError,
  not_found: NotFoundError,
  task_not_approved: TaskNotApprovedError,
  task_closed: TaskClosedError,
  lease_revoked: LeaseRevokedError,
  rate_limited: RateLimitedError,
  adapter_unavailable: AdapterUnavailableError,
  unavailable: UnavailableError,
  internal: InternalError,
};

/**
 * The typed error for a broker answer: the subclass for a known code, else a plain
 * `JitkeyApiError` carrying the code (the API may add codes).
 */
export function apiError(status: number, body: ApiErrorBody): JitkeyApiError {
  const ErrorClass = API_ERRORS[body.code] ?? JitkeyApiError;
  return new ErrorClass(status, body);
}

/** The broker could not be reached (connection refused, DNS, timeout, reset) after any retries. */
export class BrokerUnreachableError extends JitkeyClientError {
  constructor(
    readonly url: string,
    cause: unknown,
  ) {
    super("broker_unreachable", `broker unreachable at ${url}: ${describeNetworkError(cause)}`, { cause });
  }
}

/** An operator denied the task while the client waited for approval. */
export class ApprovalDeniedError extends JitkeyClientError {
  constructor(
    readonly taskId: string,
    readonly deniedBy: string | undefined,
    readonly note: string | undefined,
  ) {
    super(
      "approval_denied",
      `task ${taskId} was denied${deniedBy ? ` by ${deniedBy}` : ""}${note ? `: ${note}` : ""}`,
    );
  }
}

/** Nobody approved the task within the approval timeout. */
export class ApprovalTimeoutError extends JitkeyClientError {
  constructor(
    readonly taskId: string,
    readonly timeoutSeconds: number,
  ) {
    super("approval_timeout", `task ${taskId} was not approved within ${timeoutSeconds} s`);
  }
}

/** The most useful words for a network failure: fetch hides the system error in `cause`. */
export function describeNetworkError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  if (error.name === "TimeoutError") return "request timed out";
  const cause = error.cause as { code?: string; message?: string } | undefined;
  return cause?.code ?? cause?.message ?? error.message;
}
