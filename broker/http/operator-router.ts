import { Router } from "express";
import { exportAudit } from "../audit/audit-export.ts";
import { notificationName } from "../audit/audit-log.ts";
import type { Broker } from "../broker.ts";
import type { NotificationEvent } from "../config.ts";
import type { LiveEvent } from "../events/live-events.ts";
import type { Authenticator } from "./auth.ts";
import { AuditListQuery, DevAgentTokenBody, EventsQuery } from "./schemas.ts";
import { validate } from "./validate.ts";

/** `/v1/introspect` (RFC 7662), `/v1/events` (Server-Sent Events) and `/v1/audit`. */
export function oversightRouter(broker: Broker, auth: Authenticator): Router {
  const router = Router();

  // POST /introspect is a hot route: served by http/hot-routes.ts, ahead of Express.

  router.get("/events", async (req, res) => {
    await auth.operator(req);
    const { types } = validate(EventsQuery, req.query, "query");
    const wanted = (name: NotificationEvent) => !types || types.includes(name);
    res.status(200).set({
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-store",
      Connection: "keep-alive",
      // Proxies must not buffer a stream.
      "X-Accel-Buffering": "no",
    });
    const sent = new Set<string>();
    const send = ({ name, event }: LiveEvent) => {
      if (!wanted(name) || sent.has(event.id)) return;
      sent.add(event.id);
      if (sent.size > 10_000) sent.clear();
      res.write(`id: ${event.id}\nevent: ${name}\ndata: ${JSON.stringify(event)}\n\n`);
    };
    // Subscribe before replaying, so nothing falls between the two.
    let buffered: LiveEvent[] | undefined = [];
    const unsubscribe = broker.events.subscribe((live) => (buffered ? buffered.push(live) : send(live)));
    // Headers go once the subscription is in place: a client that sees them misses nothing after.
    await broker.events.ready();
    res.flushHeaders();
    const keepalive = setInterval(() => res.write(": keepalive\n\n"), 15_000);
    res.on("close", () => {
      unsubscribe();
      clearInterval(keepalive);
    });
    res.write("retry: 2000\n\n");
    const lastEventId = req.get("last-event-id");
    if (lastEventId) {
      // Resume: what happened since the client's last event, from the audit trail.
      const missed = await broker.audit.query({ after: lastEventId.slice(0, 64), limit: 1000 });
      for (const event of missed) {
        const name = notificationName(event);
        if (name) send({ name, event });
      }
    }
    for (const live of buffered) send(live);
    buffered = undefined;
  });

  router.get("/audit/verify", async (req, res) => {
    await auth.operator(req);
    res.set("Cache-Control", "no-store").json(await broker.sealer.verify());
  });

  router.get("/audit/export", async (req, res) => {
    await auth.operator(req);
    res.status(200).set({
      "Content-Type": "application/x-ndjson; charset=utf-8",
      "Cache-Control": "no-store",
      "Content-Disposition": 'attachment; filename="jitkey-audit.jsonl"',
    });
    const lines = exportAudit({
      sealer: broker.sealer,
      keys: broker.keys,
      issuer: broker.issuer,
      jwks: await broker.publishedKeys.jwks(),
      firstSealedId: async (shard) =>
        (await broker.redis.hget(broker.keys.shard(shard).auditSeal, "firstId")) ?? undefined,
      now: new Date(broker.clock.now()),
    });
    for await (const line of lines) {
      if (!res.write(`${JSON.stringify(line)}\n`)) await new Promise((resolve) => res.once("drain", resolve));
    }
    res.end();
  });

  router.get("/audit", async (req, res) => {
    await auth.operator(req);
    res.json({ events: await broker.audit.query(validate(AuditListQuery, req.query, "query")) });
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
