import { isTransientNetworkCode, redactSecrets } from "../adapter-error-text.ts";
import { AdapterError } from "../types.ts";

/**
 * AWS error codes worth retrying. The SDK has already retried these (`maxAttempts`) by the time
 * one reaches the adapter; the revocation job retries again later.
 */
const TRANSIENT_CODES = new Set([
  "Throttling",
  "RequestLimitExceeded",
  "TooManyRequests",
  "ServiceUnavailable",
  "InternalFailure",
  "InternalError",
  "ServiceFailure",
  "RequestTimeout",
  "TimeoutError",
  "EntityTemporarilyUnmodifiable",
  // The SDK corrects its clock offset after this one; the next attempt is signed right.
  "RequestExpired",
  // The broker's own temporary credentials ran out; the provider chain fetches new ones.
  "ExpiredToken",
  "CredentialsProviderError",
  "IDPCommunicationError",
]);

/** The longest AWS error text kept in a message; AWS texts are one sentence. */
const MAX_TEXT = 300;

/**
 * A failed AWS call. `code` is AWS's error code without the SDK's `Exception` suffix
 * (`AccessDenied`, `NoSuchEntity`, `Throttling`), or a socket error code; `status` is the HTTP
 * status when AWS answered. Neither ever holds a secret.
 */
export class AwsRequestError extends AdapterError {
  readonly code: string;
  readonly status: number | undefined;

  constructor(message: string, options: { permanent: boolean; code: string; status?: number }) {
    super(message, { permanent: options.permanent });
    this.code = options.code;
    this.status = options.status;
  }
}

interface SdkFailure {
  name?: unknown;
  code?: unknown;
  message?: unknown;
  $metadata?: { httpStatusCode?: unknown };
}

/** AWS's error code: the SDK names modelled errors `<Code>Exception`, others `<Code>`. */
function awsCode(error: SdkFailure): string {
  return (typeof error.name === "string" ? error.name : "Error").replace(/(.)Exception$/, "$1");
}

/** Replaces every known secret in `text` (AWS error texts may echo request data), then caps it. */
function redact(text: string, secrets: readonly string[]): string {
  const out = redactSecrets(text, secrets);
  return out.length > MAX_TEXT ? `${out.slice(0, MAX_TEXT)}…` : out;
}

/**
 * Maps an AWS SDK failure to an {@link AdapterError}. Throttling, 5xx, timeouts and connection
 * errors are transient; AccessDenied, MalformedPolicyDocument, ValidationError, NoSuchEntity and
 * other 4xx answers are permanent. The SDK error is not attached as `cause`: it keeps the raw
 * HTTP response, and its request may carry the broker's session token.
 */
export function toAwsError(error: unknown, action: string, secrets: readonly string[]): AdapterError {
  if (error instanceof AdapterError) return error;
  const failure = (error ?? {}) as SdkFailure;
  const socketCode = typeof failure.code === "string" ? failure.code : undefined;
  if (isTransientNetworkCode(socketCode)) {
    return new AwsRequestError(`AWS ${action} failed: ${socketCode} (AWS unreachable)`, {
      permanent: false,
      code: socketCode,
    });
  }
  const status =
    typeof failure.$metadata?.httpStatusCode === "number" ? failure.$metadata.httpStatusCode : undefined;
  const code = awsCode(failure);
  const text = redact(typeof failure.message === "string" ? failure.message : String(error), secrets);
  if (status === undefined) {
    // No answer from AWS: a timeout, a dropped connection, a credential provider that failed.
    return new AwsRequestError(`AWS ${action} failed: ${code}: ${text}`, { permanent: false, code });
  }
  const transient = TRANSIENT_CODES.has(code) || status >= 500 || status === 429;
  return new AwsRequestError(`AWS ${action} failed (HTTP ${status} ${code}): ${text}`, {
    permanent: !transient,
    code,
    status,
  });
}
