import { Router } from "express";
import type { Broker } from "../broker.ts";
import { ForbiddenError, UnauthenticatedError } from "../errors.ts";
import { actorOf } from "../identity/principal.ts";
import type { Authenticator } from "./auth.ts";
import { AuditListQuery, DevAgentTokenBody, IntrospectBody } from "./schemas.ts";
import { validate } from "./validate.ts";

/** `/v1/introspect` (RFC 7662) and `/v1/audit`. */
export function oversightRouter(broker: Broker, auth: Authenticator): Router {
  const router = Router();

  router.post("/introspect", async (req, res) => {
    // RFC 7662 §2.1: a caller that is not a registered introspector or operator is unauthenticated here.
    const caller = await auth.require(req, "introspector", "operator").catch((error: unknown) => {
      throw error instanceof ForbiddenError
        ? new UnauthenticatedError("introspection needs an introspector or operator token")
        : error;
    });
    const { token } = validate(IntrospectBody, req.body);
    res.json(await broker.introspection.introspect(token, actorOf(caller)));
  });

  router.get("/audit", async (req, res) => {
    await auth.operator(req);
    res.json({ events: await broker.audit.query(validate(AuditListQuery, req.query)) });
  });

  return router;
}

/** Dev mode only: `POST /v1/dev/agent-token` signs a dev identity token (operator only). */
export function devRouter(broker: Broker, auth: Authenticator): Router {
  const router = Router();
  router.post("/agent-token", async (req, res) => {
    await auth.operator(req);
    const dev = broker.dev;
    if (!dev) throw new Error("dev router mounted without dev mode");
    const { agent, ttlSeconds } = validate(DevAgentTokenBody, req.body);
    const token = await dev.issueAgentToken(agent, ttlSeconds);
    res.json({ agentId: `dev:${agent}`, token });
  });
  return router;
}
