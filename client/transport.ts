import { setTimeout as sleep } from "node:timers/promises";
import { type ApiErrorBody, apiError, BrokerUnreachableError, type JitkeyApiError } from "./errors.ts";

/** How requests that are safe to repeat are retried. */
export interface RetryOptions {
  /** Attempts in all, the first included (default 4). */
  attempts?: number;
  /** The first backoff; it doubles with each attempt, with jitter (default 250 ms). */
  baseDelayMs?: number;
  /** The longest single wait, and the longest `Retry-After` honoured (default 30 000 ms). */
  maxDelayMs?: number;
}

/** Where a bearer token comes from: a string, or a function called before every request. */
export type TokenSource = string | (() => string | Promise<string>);

export interface TransportOptions {
  broker: string | URL;
  token: TokenSource;
  retry?: RetryOptions;
  /** How long one request may take before it counts as a network failure (default 30 000 ms). */
  requestTimeoutMs?: number;
}

/** One call to the broker. */
export interface BrokerRequest {
  method: "GET" | "POST" | "DELETE";
  path: string;
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  /**
   * True when repeating the request cannot do anything twice (GETs, completing a task,
   * releasing a lease): it is then retried on network errors, 429 and 503. Other requests
   * are repeated only when the connection was refused, i.e. the broker never received them.
   */
  idempotent: boolean;
  signal?: AbortSignal;
  /** Seconds the broker may hold the request open (long poll), added to the timeout. */
  holdSeconds?: number;
}

const RETRYABLE_STATUSES = new Set([429, 503]);

/** Sends JSON requests to the broker, turns error answers into typed errors, retries where safe. */
export class BrokerTransport {
  readonly baseUrl: string;
  readonly #token: TokenSource;
  readonly #attempts: number;
  readonly #baseDelayMs: number;
  readonly #maxDelayMs: number;
  readonly #timeoutMs: number;

  constructor(options: TransportOptions) {
    this.baseUrl = String(options.broker).replace(/\/+$/, "");
    this.#token = options.token;
    this.#attempts = Math.max(1, options.retry?.attempts ?? 4);
    this.#baseDelayMs = options.retry?.baseDelayMs ?? 250;
    this.#maxDelayMs = options.retry?.maxDelayMs ?? 30_000;
    this.#timeoutMs = options.requestTimeoutMs ?? 30_000;
  }

  /** Sends `request` and returns the parsed JSON answer; throws a typed error otherwise. */
  send<T>(request: BrokerRequest): Promise<T> {
    return this.#exchange(request, async (response) => (await response.json()) as T);
  }

  /** Sends `request` and returns the answer's body as text (JSON Lines exports, say). */
  text(request: BrokerRequest): Promise<string> {
    return this.#exchange(request, (response) => response.text());
  }

  async #exchange<T>(request: BrokerRequest, read: (response: Response) => Promise<T>): Promise<T> {
    const url = this.#url(request);
    for (let attempt = 1; ; attempt++) {
      const last = attempt >= this.#attempts;
      let response: Response;
      try {
        response = await this.#fetch(url, request);
      } catch (error) {
        if (request.signal?.aborted) throw request.signal.reason ?? error;
        if (!(error instanceof TypeError || isTimeout(error))) throw error;
        if (last || !(request.idempotent || connectionRefused(error)))
          throw new BrokerUnreachableError(url, error);
        await sleep(this.#backoff(attempt), undefined, { signal: request.signal });
        continue;
      }
      if (response.ok) return read(response);
      const error = await errorOf(response);
      const retryAfterMs = retryAfter(response.headers.get("retry-after"));
      const retryable = request.idempotent && RETRYABLE_STATUSES.has(response.status);
      if (last || !retryable || (retryAfterMs ?? 0) > this.#maxDelayMs) throw error;
      await sleep(retryAfterMs ?? this.#backoff(attempt), undefined, { signal: request.signal });
    }
  }

  async #fetch(url: string, request: BrokerRequest): Promise<Response> {
    const token = typeof this.#token === "function" ? await this.#token() : this.#token;
    const timeout = AbortSignal.timeout(this.#timeoutMs + (request.holdSeconds ?? 0) * 1000);
    const headers: Record<string, string> = {
      Authorization: `Bearer ${token}`,
      Accept: "application/json",
    };
    if (request.body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(url, {
      method: request.method,
      headers,
      body: request.body === undefined ? undefined : JSON.stringify(request.body),
      signal: request.signal ? AbortSignal.any([request.signal, timeout]) : timeout,
    });
  }

  #url(request: BrokerRequest): string {
    const url = new URL(this.baseUrl + request.path);
    for (const [name, value] of Object.entries(request.query ?? {}))
      if (value !== undefined) url.searchParams.set(name, String(value));
    return url.toString();
  }

  /** Exponential backoff with full jitter over the upper half, so clients do not retry in step. */
  #backoff(attempt: number): number {
    const ceiling = Math.min(this.#maxDelayMs, this.#baseDelayMs * 2 ** (attempt - 1));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }
}

/** The typed error for a non-2xx answer, also when a proxy in between answered without JSON. */
async function errorOf(response: Response): Promise<JitkeyApiError> {
  const text = await response.text().catch(() => "");
  let body: Partial<ApiErrorBody> | undefined;
  try {
    body = (JSON.parse(text) as { error?: Partial<ApiErrorBody> }).error;
  } catch {
    body = undefined;
  }
  if (body && typeof body.code === "string")
    return apiError(response.status, {
      ...body,
      code: body.code,
      message: String(body.message ?? body.code),
    });
  return apiError(response.status, {
    code: codeForStatus(response.status),
    message: `HTTP ${response.status} ${response.statusText}`.trim(),
    requestId: response.headers.get("x-request-id") ?? undefined,
  });
}

function codeForStatus(status: number): string {
  const codes: Record<number, string> = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    429: "rate_limited",
    502: "adapter_unavailable",
    503: "unavailable",
  };
  return codes[status] ?? (status >= 500 ? "internal" : "invalid_request");
}

/** `Retry-After` as milliseconds: delay-seconds or an HTTP date (RFC 9110 §10.2.3). */
function retryAfter(header: string | null): number | undefined {
  if (!header) return undefined;
  if (/^\d+$/.test(header.trim())) return Number(header) * 1000;
  const at = Date.parse(header);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

function isTimeout(error: unknown): boolean {
  return error instanceof Error && error.name === "TimeoutError";
}

/** Refused means the broker never saw the request, so even a create may be sent again. */
function connectionRefused(error: unknown): boolean {
  return (error as { cause?: { code?: string } }).cause?.code === "ECONNREFUSED";
}
