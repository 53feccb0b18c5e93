import { isTransientNetworkCode, redactSecrets } from "../adapter-error-text.ts";
import { AdapterError } from "../types.ts";

/** gRPC status codes as google-gax reports them (REST errors are mapped onto these), by name. */
const STATUS_NAMES: Readonly<Record<number, string>> = {
  1: "CANCELLED",
  2: "UNKNOWN",
  3: "INVALID_ARGUMENT",
  4: "DEADLINE_EXCEEDED",
  5: "NOT_FOUND",
  6: "ALREADY_EXISTS",
  7: "PERMISSION_DENIED",
  8: "RESOURCE_EXHAUSTED",
  9: "FAILED_PRECONDITION",
  10: "ABORTED",
  11: "OUT_OF_RANGE",
  12: "UNIMPLEMENTED",
  13: "INTERNAL",
  14: "UNAVAILABLE",
  15: "DATA_LOSS",
  16: "UNAUTHENTICATED",
};

/** Statuses worth retrying: Google's own guidance for these is "retry with backoff". */
const TRANSIENT_STATUSES = new Set([
  "CANCELLED",
  "UNKNOWN",
  "DEADLINE_EXCEEDED",
  "RESOURCE_EXHAUSTED",
  "ABORTED",
  "INTERNAL",
  "UNAVAILABLE",
]);

/** A failed Google call; `status` is Google's status name, e.g. `PERMISSION_DENIED`. */
export class GcpAdapterError extends AdapterError {
  readonly status: string | undefined;

  constructor(message: string, options: { permanent: boolean; status?: string }) {
    super(message, { permanent: options.permanent });
    this.status = options.status;
  }
}

/** Google's canonical status for an HTTP status, when the body does not say. */
const STATUS_BY_HTTP: Readonly<Record<number, string>> = {
  400: "INVALID_ARGUMENT",
  401: "UNAUTHENTICATED",
  403: "PERMISSION_DENIED",
  404: "NOT_FOUND",
  409: "ABORTED",
  429: "RESOURCE_EXHAUSTED",
  499: "CANCELLED",
  500: "INTERNAL",
  501: "UNIMPLEMENTED",
  503: "UNAVAILABLE",
  504: "DEADLINE_EXCEEDED",
};

/** Google's JSON error body (`{"error": {"message", "status"}}`), when `text` is one. */
function googleErrorBody(text: string): { message?: string; status?: string } | undefined {
  if (!text.startsWith("{")) return undefined;
  try {
    const body = (JSON.parse(text) as { error?: { message?: unknown; status?: unknown } }).error;
    return {
      ...(typeof body?.message === "string" ? { message: body.message } : {}),
      ...(typeof body?.status === "string" ? { status: body.status } : {}),
    };
  } catch {
    return undefined;
  }
}

/**
 * Maps a google-gax / gaxios / fetch failure to an {@link AdapterError}: Google's
 * INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND, UNAUTHENTICATED, FAILED_PRECONDITION are
 * permanent; RESOURCE_EXHAUSTED (429), UNAVAILABLE (503), other 5xx, timeouts and network
 * errors are transient. Over REST, google-gax lets gaxios reject a non-2xx answer, with
 * Google's JSON error body as the message; over gRPC it reports a numeric status code; both
 * are handled. The original error is not attached as `cause`: gaxios errors carry the
 * request, Authorization header included.
 */
export function toAdapterError(error: unknown, action: string, secrets: readonly string[]): AdapterError {
  if (error instanceof AdapterError) return error;
  const failure = (error ?? {}) as {
    code?: unknown;
    status?: unknown;
    message?: unknown;
    cause?: unknown;
    response?: { status?: unknown };
  };
  const rawText = typeof failure.message === "string" ? failure.message : String(error);
  const httpStatus =
    typeof failure.response?.status === "number"
      ? failure.response.status
      : typeof failure.status === "number" && failure.status >= 100
        ? failure.status
        : undefined;
  if (httpStatus !== undefined) {
    const body = googleErrorBody(rawText);
    const status = body?.status ?? STATUS_BY_HTTP[httpStatus] ?? `HTTP_${httpStatus}`;
    const transient =
      httpStatus >= 500 || httpStatus === 429 || httpStatus === 408 || TRANSIENT_STATUSES.has(status);
    const text = redactSecrets(body?.message ?? rawText, secrets).slice(0, 500);
    return new GcpAdapterError(`GCP ${action} failed (HTTP ${httpStatus} ${status}): ${text}`, {
      permanent: !transient,
      status,
    });
  }
  const text = redactSecrets(rawText, secrets).slice(0, 500);
  const grpcStatus = typeof failure.code === "number" ? STATUS_NAMES[failure.code] : undefined;
  if (grpcStatus) {
    return new GcpAdapterError(`GCP ${action} failed (${grpcStatus}): ${text}`, {
      permanent: !TRANSIENT_STATUSES.has(grpcStatus),
      status: grpcStatus,
    });
  }
  // fetch() reports socket failures as "fetch failed" with the code on its cause.
  const code = failure.code ?? (failure.cause as { code?: unknown } | undefined)?.code;
  if (isTransientNetworkCode(code)) {
    return new GcpAdapterError(`GCP ${action} failed: ${code} (Google unreachable)`, { permanent: false });
  }
  // Credential lookups (ADC, metadata server), malformed answers: may clear up on retry.
  return new GcpAdapterError(`GCP ${action} failed: ${text}`, { permanent: false });
}
