import { Router } from "express";
import type { Broker } from "../broker.ts";
import type { Authenticator } from "./auth.ts";
import { LeaseId, LeaseListQuery, RenewLeaseBody, RevocationBody } from "./schemas.ts";
import { idParam, validate } from "./validate.ts";
import { leaseView } from "./views.ts";

/** `/v1/leases`: read, list, renew and release leases. */
export function leasesRouter(broker: Broker, auth: Authenticator): Router {
  const router = Router();
  router.param("id", idParam(LeaseId, "lease"));

  router.get("/", async (req, res) => {
    await auth.operator(req);
    const leases = await broker.leases.list(validate(LeaseListQuery, req.query, "query"));
    res.json({ leases: leases.map(leaseView) });
  });

  router.get("/:id", async (req, res) => {
    const principal = await auth.require(req, "agent", "operator");
    res.json({ lease: leaseView(await broker.leases.get(req.params.id, principal)) });
  });

  router.post("/:id/renew", async (req, res) => {
    const agent = await auth.agent(req);
    const body = validate(RenewLeaseBody, req.body);
    res.json({ lease: leaseView(await broker.leases.renew(req.params.id, agent, body)) });
  });

  router.delete("/:id", async (req, res) => {
    const principal = await auth.require(req, "agent", "operator");
    res.status(202).json({ lease: leaseView(await broker.leases.release(req.params.id, principal)) });
  });

  return router;
}

/** `/v1/revocations`: operator force revocation. */
export function revocationsRouter(broker: Broker, auth: Authenticator): Router {
  const router = Router();
  router.post("/", async (req, res) => {
    const operator = await auth.operator(req);
    const { reason, ...selector } = validate(RevocationBody, req.body);
    const revocation = await broker.revocations.revoke(selector, reason, operator);
    res.status(202).json({ revocation });
  });
  return router;
}
