import express, { type Express, Router } from "express";
import type { Broker } from "./broker.ts";
import { Authenticator } from "./http/auth.ts";
import { errorMiddleware, notFoundHandler } from "./http/error-middleware.ts";
import { leasesRouter, revocationsRouter } from "./http/leases-router.ts";
import { buildOpenApi } from "./http/openapi.ts";
import { devRouter, oversightRouter } from "./http/operator-router.ts";
import { tasksRouter } from "./http/tasks-router.ts";
import { newId } from "./ids.ts";

/** Builds the Express app over a broker. Does not listen: easy to test with supertest. */
export function createApp(broker: Broker): Express {
  const app = express();
  app.disable("x-powered-by");
  // JSON API answers are not cacheable (many carry secrets): no ETag, and no hashing of every body for one.
  app.set("etag", false);
  app.set("trust proxy", broker.config.http.trustProxy);
  app.set("query parser", "simple");

  app.use((req, res, next) => {
    const requestId = newId("req");
    res.locals.requestId = requestId;
    res.set("X-Request-Id", requestId);
    const started = process.hrtime.bigint();
    res.on("finish", () => {
      broker.logger.info("request", {
        requestId,
        method: req.method,
        path: req.originalUrl.split("?")[0],
        status: res.statusCode,
        ms: Number(process.hrtime.bigint() - started) / 1e6,
      });
    });
    next();
  });
  app.use(express.json({ limit: "64kb" }));
  app.use(express.urlencoded({ extended: false, limit: "64kb" }));

  const auth = new Authenticator(broker);
  app.use("/v1/tasks", tasksRouter(broker, auth));
  app.use("/v1/leases", leasesRouter(broker, auth));
  app.use("/v1/revocations", revocationsRouter(broker, auth));
  app.use("/v1", oversightRouter(broker, auth));
  if (broker.config.devMode && broker.dev) app.use("/v1/dev", devRouter(broker, auth));
  app.use(systemRouter(broker));
  app.use(notFoundHandler);
  app.use(errorMiddleware(broker.logger));
  return app;
}

function systemRouter(broker: Broker): Router {
  const router = Router();
  const openapi = buildOpenApi(broker.issuer);

  router.get("/healthz", (_req, res) => {
    res.json({ status: "ok" });
  });

  router.get("/readyz", async (_req, res) => {
    const redis = await broker.redis.ping().then(
      () => true,
      () => false,
    );
    const workers = redis ? await broker.queue.queue.getWorkersCount().catch(() => 0) : 0;
    const ready = redis && workers > 0;
    res.status(ready ? 200 : 503).json({ status: ready ? "ready" : "not_ready", redis, workers });
  });

  router.get("/metrics", async (_req, res) => {
    res
      .set("Content-Type", broker.metrics.registry.contentType)
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
