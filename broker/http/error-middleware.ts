import type { ServerResponse } from "node:http";
import type { ErrorRequestHandler, RequestHandler, Response } from "express";
import { InvalidRequestError, JitkeyError, NotFoundError, UnavailableError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { isRedisConnectionError, type RedisHealth } from "./redis-health.ts";

/** Unknown routes answer `not_found` in the error shape. */
export const notFoundHandler: RequestHandler = (req, _res, next) => {
  next(new NotFoundError(`route ${req.method} ${req.path.slice(0, 200)}`));
};

/**
 * Fixed messages for what Express and body-parser refuse before a route runs. Their own
 * messages may quote the body (a token being introspected), so none of them is passed on.
 */
const TRANSPORT_MESSAGES: Record<string, string> = {
  "entity.parse.failed": "request body is not valid JSON",
  "entity.too.large": "request body is too large",
  "entity.verify.failed": "request body rejected",
  "encoding.unsupported": "unsupported Content-Encoding",
  "charset.unsupported": "unsupported charset",
  "request.aborted": "request body was cut short",
  "request.size.invalid": "request body is not as long as Content-Length says",
  "stream.encoding.set": "request body rejected",
  "stream.not.readable": "request body rejected",
  "parameters.too.many": "too many form parameters",
};

/** The error a body parser would raise for a body of this `type` (a key of the messages above). */
export function bodyError(type: string, status: 400 | 413 = 400): InvalidRequestError {
  return new InvalidRequestError(TRANSPORT_MESSAGES[type] ?? "request rejected", undefined, status);
}

/**
 * A client error raised by Express or a body parser (http-errors style: a 4xx `status`), e.g.
 * a corrupt gzip body or an undecodable `%` escape in the path, as `invalid_request`.
 */
function transportError(error: unknown): InvalidRequestError | undefined {
  const status = (error as { status?: unknown }).status ?? (error as { statusCode?: unknown }).statusCode;
  if (typeof status !== "number" || status < 400 || status > 499) return undefined;
  // Only what the body parsers (http-errors, `expose`) and Express's path decoding raise: a 4xx
  // `status` on anything else is some library's detail, and stays a 500 so the bug is seen.
  if ((error as { expose?: unknown }).expose !== true && !(error instanceof URIError)) return undefined;
  const type = (error as { type?: unknown }).type;
  const zlibCode = (error as { code?: unknown }).code;
  let message = typeof type === "string" ? TRANSPORT_MESSAGES[type] : undefined;
  if (!message && error instanceof URIError) message = "the path holds an invalid % escape";
  if (!message && typeof zlibCode === "string") message = "request body does not match its Content-Encoding";
  return new InvalidRequestError(
    message ?? "request rejected",
    undefined,
    status === 413 ? 413 : status === 415 ? 415 : 400,
  );
}

/**
 * Writes `{"error": {"code", "message", ...details, requestId}}` with the headers its code
 * needs, on any node response — Express's, or a hot route's.
 */
export function writeError(res: ServerResponse, error: JitkeyError, requestId: string | undefined): void {
  const retryAfter = error.details?.retryAfterSeconds;
  if (typeof retryAfter === "number") res.setHeader("Retry-After", String(retryAfter));
  if (error.status === 401) res.setHeader("WWW-Authenticate", 'Bearer realm="jitkey"');
  writeJson(res, error.status, {
    error: { code: error.code, message: error.message, ...error.details, requestId },
  });
}

/** The media type of every JSON answer, as Express's `res.json` writes it. */
export const JSON_CONTENT_TYPE = "application/json; charset=utf-8";

/** A JSON answer on a plain node response, as Express's `res.json` writes it. */
export function writeJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader("Content-Type", JSON_CONTENT_TYPE);
  res.setHeader("Content-Length", Buffer.byteLength(text));
  res.end(text);
}

/** {@link writeError} for Express handlers. */
export function sendError(res: Response, error: JitkeyError): void {
  writeError(res, error, res.locals.requestId as string | undefined);
}

/**
 * What a thrown error means to the client: a known error, a transport error from the body
 * parsers, `unavailable` while Redis is unreachable — or `undefined` for a bug (a 500).
 */
export function clientError(
  error: unknown,
  health: RedisHealth | undefined,
  log: (message: string) => void,
): JitkeyError | undefined {
  const known = error instanceof JitkeyError ? error : transportError(error);
  if (known) return known;
  if (isRedisConnectionError(error) || (health && !health.up)) {
    log("redis unreachable");
    return new UnavailableError();
  }
  return undefined;
}

/**
 * The one place errors become HTTP responses. Anything unexpected is a 500 `internal` with
 * the request id only: no message, no stack — unless Redis is unreachable, which makes it a
 * 503 `unavailable` the client may retry.
 */
export function errorMiddleware(logger: Logger, health?: RedisHealth): ErrorRequestHandler {
  return (error, req, res, _next) => {
    const requestId = res.locals.requestId as string | undefined;
    if (res.headersSent) {
      // Answered already (503 while Redis was gone); the late result has nowhere to go.
      logger.warn("late error after the answer was sent", { requestId, path: req.path, error });
      return;
    }
    const known = clientError(error, health, (message) =>
      logger.warn(message, { requestId, method: req.method, path: req.path, error }),
    );
    if (known) {
      sendError(res, known);
      return;
    }
    logger.error("unhandled error", { requestId, method: req.method, path: req.path, error });
    writeJson(res, 500, { error: { code: "internal", message: "internal error", requestId } });
  };
}
