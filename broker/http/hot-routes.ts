import type { IncomingMessage, ServerResponse } from "node:http";
import proxyaddr from "proxy-addr";
import typeis from "type-is";
import type { Broker } from "../broker.ts";
import {
  ForbiddenError,
  InvalidRequestError,
  type JitkeyError,
  NotFoundError,
  UnauthenticatedError,
  UnavailableError,
} from "../errors.ts";
import { newId } from "../ids.ts";
import { mintBinding } from "../oauth/mint-binding.ts";
import type { Authenticator } from "./auth.ts";
import { bodyError, clientError, JSON_CONTENT_TYPE, writeError, writeJson } from "./error-middleware.ts";
import { type Caller, capped } from "./failed-auth.ts";
import type { RedisHealth } from "./redis-health.ts";
import { IntrospectBody, MintLeaseBody, TaskId } from "./schemas.ts";
import { validate } from "./validate.ts";
import { leaseView } from "./views.ts";

/** A connect-style middleware, as helmet, cors and the body parsers are. */
type Middleware = (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void;

/** What the hot routes share with the Express app: the same instances, the same behaviour. */
export interface HotRouteParts {
  auth: Authenticator;
  health: RedisHealth;
  /** The headers every answer gets whatever was asked (helmet's), as the Express app sets them. */
  fixedHeaders: readonly (readonly [string, string])[];
  /** Header middleware whose answer depends on the request (CORS, when configured). */
  requestHeaders: readonly Middleware[];
  /** The body parsers, in order (JSON, then form), for bodies that are not plain (see {@link plainBodyType}). */
  bodyParsers: readonly Middleware[];
  /** The body size limit the parsers enforce, in bytes. */
  bodyLimit: number;
  /** The parameter limit of the form parser. */
  formParameterLimit: number;
  /** Media types a body may have; anything else is 415 before it is read. */
  bodyTypes: readonly string[];
  /** The compiled `trust proxy` setting, for the client's address. */
  trustProxy: (address: string, hop: number) => boolean;
  /** Writes the request's log line when it finishes, or nothing when requests are not logged. */
  logRequest: (req: IncomingMessage, res: ServerResponse, requestId: string) => void;
}

interface HotRoute {
  template: string;
  handle(call: HotCall): Promise<void>;
}

interface HotCall {
  req: IncomingMessage;
  res: ServerResponse;
  caller: Caller;
  body: unknown;
  /** The `:id` of the path, decoded. */
  id?: string;
  /** Answers `body` as JSON, with `headers` (flat: name, value, ...) beside the ones every answer has. */
  answer(status: number, body: unknown, headers?: readonly string[]): void;
  /** {@link answer} for a body already serialized. */
  answerJson(status: number, json: string, headers?: readonly string[]): void;
}

const MINT_PATH = /^\/v1\/tasks\/([^/]+)\/leases\/?$/;

/**
 * The two routes on every agent's and resource server's critical path — minting a credential
 * and introspecting one — served without Express's per-request machinery (routing, request and
 * response decoration), by the very parts the Express app is built from: the same security
 * headers, CORS, body parsers and limits, fail-fast while Redis is down, authentication,
 * validation, services, views and error answers. Every other route, and every other method on
 * these paths, goes to Express. Returns a function that serves a request if it is one of them.
 */
export function hotRoutes(broker: Broker, parts: HotRouteParts) {
  const { auth } = parts;
  // The headers every answer carries, flat as `writeHead` takes them. Answers (not errors) set
  // them all with one `writeHead`: a `setHeader` for each, as Express sets them, measured a
  // tenth of an introspection's cost.
  const common = parts.fixedHeaders.flat();
  // As the Express app does: a request still waiting on Redis when it goes away answers 503 soon.
  const inFlight = new Set<{ res: ServerResponse; requestId: string }>();
  parts.health.onLost(() => {
    for (const waiting of inFlight)
      setTimeout(() => {
        const { res, requestId } = waiting;
        if (res.headersSent || parts.health.up) return;
        setCommonHeaders(res, requestId);
        writeError(res, new UnavailableError(), requestId);
      }, 500).unref();
  });
  const introspect: HotRoute = {
    template: "POST /v1/introspect",
    async handle({ caller, body, answerJson }) {
      // RFC 7662 §2.1: a caller that is not a registered introspector or operator is unauthenticated here.
      const principal = await auth
        .requireCaller(caller, "introspector", "operator")
        .catch((error: unknown) => {
          throw error instanceof ForbiddenError
            ? new UnauthenticatedError("introspection needs an introspector or operator token")
            : error;
        });
      const { token } = validate(IntrospectBody, body);
      const { introspection } = broker;
      answerJson(200, introspection.json(await introspection.introspect(token, principal)));
    },
  };
  const mint: HotRoute = {
    template: "POST /v1/tasks/:id/leases",
    async handle({ req, caller, body, id, answer }) {
      if (!TaskId.safeParse(id).success) throw new NotFoundError("task");
      const taskId = id as string;
      const agent = await auth.requireCaller(caller, "agent");
      const request = validate(MintLeaseBody, body);
      // RFC 9449: a DPoP proof binds the credential to the proof's key.
      const binding = await mintBinding(broker, agent, {
        taskId,
        resource: request.resource,
        proof: header(req, "dpop"),
      });
      const { lease, credential } = await broker.leases.mint(agent, taskId, {
        ...request,
        binding,
        sourceAddress: caller.address,
      });
      // The secret travels in this one response; nothing may cache it.
      answer(201, { lease: leaseView(lease), credential }, [
        "Pragma",
        "no-cache",
        "Location",
        `/v1/leases/${lease.id}`,
      ]);
    },
  };

  return (req: IncomingMessage, res: ServerResponse): boolean => {
    if (req.method !== "POST") return false;
    const path = (req.url ?? "").split("?", 1)[0] ?? "";
    if (path === "/v1/introspect") {
      void serve(req, res, introspect, undefined);
      return true;
    }
    const match = MINT_PATH.exec(path);
    if (!match) return false;
    void serve(req, res, mint, match[1]);
    return true;
  };

  /** The headers every answer carries, errors included, flat as `writeHead` takes them. */
  function commonHeaders(requestId: string): string[] {
    // Answers carry credentials and live state: no cache may keep one, errors included.
    return [...common, "X-Request-Id", requestId, "Cache-Control", "no-store"];
  }

  /** {@link commonHeaders} one by one, for an answer not written by `answer`. */
  function setCommonHeaders(res: ServerResponse, requestId: string): void {
    const headers = commonHeaders(requestId);
    for (let at = 0; at < headers.length; at += 2)
      res.setHeader(headers[at] as string, headers[at + 1] as string);
  }

  async function serve(
    req: IncomingMessage,
    res: ServerResponse,
    route: HotRoute,
    rawId: string | undefined,
  ) {
    const requestId = newId("req");
    parts.logRequest(req, res, requestId);
    const answerJson = (status: number, text: string, headers: readonly string[] = []) => {
      res.writeHead(status, [
        ...commonHeaders(requestId),
        ...headers,
        "Content-Type",
        JSON_CONTENT_TYPE,
        "Content-Length",
        String(Buffer.byteLength(text)),
      ]);
      res.end(text);
    };
    const answer = (status: number, body: unknown, headers: readonly string[] = []) =>
      answerJson(status, JSON.stringify(body), headers);
    const waiting = { res, requestId };
    try {
      for (const middleware of parts.requestHeaders) await run(middleware, req, res);
      if (!parts.health.up) throw new UnavailableError();
      inFlight.add(waiting);
      const body = await readBody(req, res);
      // proxy-addr reads X-Forwarded-For; without one the client is the socket's peer.
      const peer = req.headers["x-forwarded-for"] === undefined ? req.socket.remoteAddress : undefined;
      const address = capped(peer ?? proxyaddr(req, parts.trustProxy), 64);
      const caller: Caller = {
        authorization: header(req, "authorization"),
        address,
        route: () => route.template,
      };
      await route.handle({
        req,
        res,
        caller,
        body,
        answer,
        answerJson,
        ...(rawId !== undefined ? { id: decodePathPart(rawId) } : {}),
      });
    } catch (error) {
      if (res.headersSent) return;
      setCommonHeaders(res, requestId);
      const known = clientError(error, parts.health, (message) =>
        broker.logger.warn(message, { requestId, method: req.method, route: route.template, error }),
      );
      if (known) writeError(res, known as JitkeyError, requestId);
      else {
        broker.logger.error("unhandled error", {
          requestId,
          method: req.method,
          route: route.template,
          error,
        });
        writeJson(res, 500, { error: { code: "internal", message: "internal error", requestId } });
      }
    } finally {
      inFlight.delete(waiting);
    }
  }

  /**
   * The request's body: read here when it is a plain one (see {@link plainBodyType}),
   * otherwise by the Express app's body parsers, which handle every other case.
   */
  async function readBody(req: IncomingMessage, res: ServerResponse): Promise<unknown> {
    const type = plainBodyType(req, parts.bodyLimit);
    if (type) return parsePlainBody(type, await readText(req), parts.formParameterLimit);
    if (refusedBodyType(req, parts.bodyTypes)) throw unsupportedBodyType(parts.bodyTypes);
    for (const parser of parts.bodyParsers) await run(parser, req, res);
    return (req as { body?: unknown }).body;
  }
}

/**
 * Whether a request carries content in a media type none of `types`: refused (415) before it
 * is read. A `Content-Length: 0` carries nothing, whatever its type says. The Express app
 * and the hot routes both ask this.
 */
export function refusedBodyType(req: IncomingMessage, types: readonly string[]): boolean {
  const { headers } = req;
  const length = headers["content-length"];
  const hasContent = headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
  return hasContent && !typeis(req, [...types]);
}

/** The answer to a {@link refusedBodyType}. */
export function unsupportedBodyType(types: readonly string[]): InvalidRequestError {
  return new InvalidRequestError(`Content-Type must be one of ${types.join(", ")}`, undefined, 415);
}

function run(middleware: Middleware, req: IncomingMessage, res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    middleware(req, res, (error) => (error ? reject(error) : resolve()));
  });
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** A path segment as Express decodes it: an undecodable `%` escape is the client's error. */
function decodePathPart(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new InvalidRequestError("the path holds an invalid % escape");
  }
}

type PlainBodyType = "json" | "form";

/** Media types a hot route reads itself, as clients send them (lowercase, spaces removed). */
const PLAIN_TYPES: ReadonlyMap<string, PlainBodyType> = new Map([
  ["application/json", "json"],
  ["application/json;charset=utf-8", "json"],
  ["application/x-www-form-urlencoded", "form"],
  ["application/x-www-form-urlencoded;charset=utf-8", "form"],
]);

/**
 * Whether a body is plain — JSON or a form in UTF-8, not compressed, its length declared and
 * within the limit — which is how every agent and resource server sends one. Such a body is
 * read and parsed here, as the body parsers would (same limits, same answers to bad input),
 * without their general machinery; anything else goes to the parsers themselves.
 */
function plainBodyType(req: IncomingMessage, limit: number): PlainBodyType | undefined {
  const { headers } = req;
  const length = headers["content-length"];
  if (length === undefined || headers["transfer-encoding"] !== undefined) return undefined;
  if (headers["content-encoding"] !== undefined || !/^\d{1,9}$/.test(length) || Number(length) > limit)
    return undefined;
  const type = headers["content-type"];
  return type === undefined ? undefined : PLAIN_TYPES.get(type.toLowerCase().replace(/ /g, ""));
}

/** The whole body as text; Node's parser delivers exactly Content-Length bytes or fails. */
function readText(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.once("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.once("error", () => reject(bodyError("request.aborted")));
  });
}

/** As body-parser's `json` (strict) and `urlencoded` (not extended) parse a body. */
export function parsePlainBody(type: PlainBodyType, raw: string, parameterLimit: number): unknown {
  // The parsers' decoder drops a byte order mark.
  const text = raw.charCodeAt(0) === 0xfeff ? raw.slice(1) : raw;
  if (text.length === 0) return {};
  if (type === "json") {
    // Strict: only an object or an array.
    if (!/^[ \t\n\r]*[[{]/.test(text)) throw bodyError("entity.parse.failed");
    try {
      return JSON.parse(text);
    } catch {
      throw bodyError("entity.parse.failed");
    }
  }
  // Counted as the form parser counts them: every `&` starts one, empty ones included.
  for (let count = 1, at = text.indexOf("&"); at !== -1; at = text.indexOf("&", at + 1))
    if (++count > parameterLimit) throw bodyError("parameters.too.many", 413);
  const form: Record<string, string | string[]> = Object.create(null);
  for (const [name, value] of formPairs(text)) {
    const seen = form[name];
    form[name] = seen === undefined ? value : [...(Array.isArray(seen) ? seen : [seen]), value];
  }
  return form;
}

/**
 * A form's name-value pairs, as `URLSearchParams` reads them (but for a leading `?`, kept as
 * the body parser keeps it). A body with nothing escaped
 * (no `%`, no `+`: an introspection's token, a mint's fields) is split directly.
 */
function formPairs(text: string): Iterable<[string, string]> {
  // URLSearchParams drops a leading `?`; the body parser keeps it in the first name, and so does this.
  if (text.includes("%") || text.includes("+"))
    return new URLSearchParams(text.startsWith("?") ? `&${text}` : text);
  const pairs: [string, string][] = [];
  for (const part of text.split("&")) {
    if (part === "") continue;
    const equals = part.indexOf("=");
    pairs.push(equals === -1 ? [part, ""] : [part.slice(0, equals), part.slice(equals + 1)]);
  }
  return pairs;
}
