import type { IncomingMessage, ServerResponse } from "node:http";
import cors from "cors";
import express, { type Express, type RequestHandler, Router } from "express";
import helmet from "helmet";
import type { Broker } from "./broker.ts";
import { Authenticator } from "./http/auth.ts";
import { errorMiddleware, notFoundHandler, sendError } from "./http/error-middleware.ts";
import { type HotRouteParts, hotRoutes, refusedBodyType, unsupportedBodyType } from "./http/hot-routes.ts";
import { leasesRouter, revocationsRouter } from "./http/leases-router.ts";
import { buildOpenApi } from "./http/openapi.ts";
import { devRouter, oversightRouter } from "./http/operator-router.ts";
import { failFastWhileRedisDown, RedisHealth } from "./http/redis-health.ts";
import { tasksRouter } from "./http/tasks-router.ts";
import { newId } from "./ids.ts";
import { oauthRouter } from "./oauth/oauth-router.ts";

/** Media types a request body may have; anything else is 415 before it is read. */
const BODY_TYPES = ["application/json", "application/x-www-form-urlencoded"];

/** The broker's HTTP request listener: the hot routes, then the Express app for the rest. */
export type BrokerHttp = ((req: IncomingMessage, res: ServerResponse) => void) & {
  readonly express: Express;
};

/**
 * Builds the broker's HTTP request listener. Does not listen: pass it to `http.createServer`,
 * or to supertest. Minting and introspection — the routes on every agent's and resource
 * server's critical path — are served by lean handlers (`http/hot-routes.ts`) made of the
 * same parts as the Express app, which serves everything else.
 */
export function createApp(broker: Broker): BrokerHttp {
  const app = express();
  app.disable("x-powered-by");
  // JSON API answers are not cacheable (many carry secrets): no ETag, and no hashing of every body for one.
  app.set("etag", false);
  app.set("trust proxy", broker.config.http.trustProxy);
  app.set("query parser", "simple");
  const health = new RedisHealth({ api: broker.redis, queue: broker.queueConnection }, broker.logger);

  const logRequests = broker.logger.isLevelEnabled("info");
  const logRequest = (req: IncomingMessage, res: ServerResponse, requestId: string) => {
    if (!logRequests) return;
    // performance.now(), not process.hrtime.bigint(): measured, the BigInt clock cost ~10 µs of
    // an introspection under load.
    const started = performance.now();
    // Read now: Express rewrites req.url for mounted routers while it routes.
    const url = req.url ?? "";
    res.on("finish", () => {
      const query = url.indexOf("?");
      broker.logger.request({
        requestId,
        method: req.method ?? "",
        path: (query === -1 ? url : url.slice(0, query)).slice(0, 200),
        status: res.statusCode,
        ms: performance.now() - started,
      });
    });
  };
  app.use((req, res, next) => {
    const requestId = newId("req");
    res.locals.requestId = requestId;
    res.set("X-Request-Id", requestId);
    logRequest(req, res, requestId);
    next();
  });
  const security = securityHeaders();
  const headers: RequestHandler[] = [security];
  const origins = broker.config.http.cors?.origins;
  if (origins) {
    headers.push(
      cors({
        origin: origins.map((origin) => origin.replace(/\/$/, "")),
        methods: ["GET", "POST", "DELETE"],
        allowedHeaders: ["Authorization", "Content-Type", "DPoP"],
        exposedHeaders: ["Location", "Retry-After", "WWW-Authenticate", "X-Request-Id"],
        maxAge: 600,
      }),
    );
  }
  app.use(headers[0] as RequestHandler);
  // Answers carry credentials and live state: no cache may keep one, errors included.
  app.use("/v1", (_req, res, next) => {
    res.set("Cache-Control", "no-store");
    next();
  });
  for (const handler of headers.slice(1)) app.use(handler);
  app.use("/v1", failFastWhileRedisDown(health, sendError));
  app.use(refuseUnknownBodyTypes);
  const bodyParsers = [
    express.json({ limit: BODY_LIMIT_BYTES }),
    express.urlencoded({ extended: false, limit: BODY_LIMIT_BYTES, parameterLimit: FORM_PARAMETER_LIMIT }),
  ];
  for (const parser of bodyParsers) app.use(parser);

  const auth = new Authenticator(broker);
  app.use("/v1/tasks", tasksRouter(broker, auth));
  app.use("/v1/leases", leasesRouter(broker, auth));
  app.use("/v1/revocations", revocationsRouter(broker, auth));
  app.use("/v1", oversightRouter(broker, auth));
  app.use(oauthRouter(broker, auth));
  if (broker.config.devMode && broker.dev) app.use("/v1/dev", devRouter(broker, auth));
  app.use(systemRouter(broker, health));
  app.use(notFoundHandler);
  app.use(errorMiddleware(broker.logger, health));

  const hot = hotRoutes(broker, {
    auth,
    health,
    fixedHeaders: headersSetBy(security),
    requestHeaders: headers.slice(1) as unknown as HotRouteParts["requestHeaders"],
    bodyParsers: bodyParsers as unknown as HotRouteParts["bodyParsers"],
    bodyLimit: BODY_LIMIT_BYTES,
    formParameterLimit: FORM_PARAMETER_LIMIT,
    bodyTypes: BODY_TYPES,
    trustProxy: app.get("trust proxy fn"),
    logRequest,
  });
  const listener = (req: IncomingMessage, res: ServerResponse) => {
    if (!hot(req, res)) app(req, res);
  };
  return Object.assign(listener, { express: app });
}

/** The largest request body read, in bytes (64 KiB), and the most parameters a form may have. */
const BODY_LIMIT_BYTES = 64 * 1024;
const FORM_PARAMETER_LIMIT = 100;

/**
 * The headers a header middleware sets, found by running it once: for helmet as configured
 * here they do not depend on the request, so the hot routes set them without running it.
 */
function headersSetBy(middleware: RequestHandler): [string, string][] {
  const set = new Map<string, [string, string]>();
  const recorder = {
    setHeader: (name: string, value: unknown) => set.set(name.toLowerCase(), [name, String(value)]),
    removeHeader: (name: string) => set.delete(name.toLowerCase()),
  };
  let synchronous = false;
  middleware({} as never, recorder as never, () => {
    synchronous = true;
  });
  if (!synchronous) throw new Error("the security headers middleware did not finish at once");
  return [...set.values()];
}

/**
 * helmet's headers for a JSON API: `nosniff`, no framing, a CSP that loads nothing, no
 * referrer. HSTS is left to the TLS-terminating proxy in front (SECURITY.md), which knows
 * whether the whole host is served over https.
 */
function securityHeaders(): RequestHandler {
  return helmet({
    contentSecurityPolicy: {
      useDefaults: false,
      directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] },
    },
    strictTransportSecurity: false,
    xFrameOptions: { action: "deny" },
  });
}

/** A body in a media type no route reads would be ignored silently; say so instead. */
const refuseUnknownBodyTypes: RequestHandler = (req, _res, next) => {
  next(refusedBodyType(req, BODY_TYPES) ? unsupportedBodyType(BODY_TYPES) : undefined);
};

function systemRouter(broker: Broker, health: RedisHealth): Router {
  const router = Router();
  const openapi = buildOpenApi(broker.issuer, { devMode: Boolean(broker.config.devMode && broker.dev) });

  router.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });

  router.get("/readyz", async (_req, res) => {
    // A lost connection answers at once: no ping waits on a Redis that is gone.
    const redis =
      health.up &&
      (await broker.redis.ping().then(
        () => true,
        () => false,
      ));
    const workers = redis ? await broker.queue.queue.getWorkersCount().catch(() => 0) : 0;
    const ready = redis && workers > 0;
    res
      .status(ready ? 200 : 503)
      .set("Cache-Control", "no-store")
      .json({ status: ready ? "ready" : "not_ready", redis, workers });
  });

  router.get("/metrics", async (_req, res) => {
    res
      .set("Content-Type", broker.metrics.registry.contentType)
      .set("Cache-Control", "no-store")
      .send(await broker.metrics.registry.metrics());
  });

  router.get("/.well-known/jwks.json", async (_req, res) => {
    res.set("Cache-Control", "public, max-age=300").json(await broker.publishedKeys.jwks());
  });

  router.get("/openapi.json", (_req, res) => {
    res.json(openapi);
  });

  return router;
}
