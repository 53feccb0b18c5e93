import type { ErrorRequestHandler, RequestHandler } from "express";
import type { Logger } from "winston";
import { InvalidRequestError, JitkeyError, NotFoundError } from "../errors.ts";

/** Unknown routes answer `not_found` in the error shape. */
export const notFoundHandler: RequestHandler = (req, _res, next) => {
  next(new NotFoundError(`route ${req.method} ${req.path}`));
};

/**
 * The one place errors become HTTP responses: `{"error": {"code", "message", ...}}`.
 * Anything unexpected is a 500 `internal` with the request id only: no message, no stack.
 */
export function errorMiddleware(logger: Logger): ErrorRequestHandler {
  return (error, req, res, _next) => {
    const requestId = res.locals.requestId as string | undefined;
    let known: JitkeyError | undefined = error instanceof JitkeyError ? error : undefined;
    const bodyParserType = (error as { type?: string }).type;
    if (!known && typeof bodyParserType === "string") {
      const status = (error as { status?: number }).status ?? 400;
      const message =
        bodyParserType === "entity.parse.failed"
          ? "request body is not valid JSON"
          : bodyParserType === "entity.too.large"
            ? "request body is too large"
            : `request body rejected (${bodyParserType})`;
      known = new InvalidRequestError(message, undefined, status === 413 ? 413 : 400);
    }
    if (known) {
      if (known instanceof JitkeyError && known.status === 429 && known.details?.retryAfterSeconds) {
        res.set("Retry-After", String(known.details.retryAfterSeconds));
      }
      if (known.status === 401) res.set("WWW-Authenticate", 'Bearer realm="jitkey"');
      res
        .status(known.status)
        .json({ error: { code: known.code, message: known.message, ...known.details, requestId } });
      return;
    }
    logger.error("unhandled error", { requestId, method: req.method, path: req.path, error });
    res.status(500).json({ error: { code: "internal", message: "internal error", requestId } });
  };
}
