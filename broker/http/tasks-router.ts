import { Router } from "express";
import type { Broker } from "../broker.ts";
import { mintBinding } from "../oauth/mint-binding.ts";
import type { Authenticator } from "./auth.ts";
import {
  CreateTaskBody,
  DecisionBody,
  MintLeaseBody,
  TaskId,
  TaskListQuery,
  TaskReadQuery,
} from "./schemas.ts";
import { idParam, validate } from "./validate.ts";
import { leaseView, taskView } from "./views.ts";

/** `/v1/tasks`: create, read, list, approve/deny, complete, and mint leases for a task. */
export function tasksRouter(broker: Broker, auth: Authenticator): Router {
  const router = Router();
  router.param("id", idParam(TaskId, "task"));

  router.post("/", async (req, res) => {
    const agent = await auth.agent(req);
    const body = validate(CreateTaskBody, req.body);
    const task = await broker.tasks.create(agent, body);
    res
      .status(201)
      .location(`/v1/tasks/${task.id}`)
      .json({ task: taskView(task) });
  });

  router.get("/", async (req, res) => {
    await auth.operator(req);
    const query = validate(TaskListQuery, req.query);
    const tasks = await broker.tasks.list(query);
    res.json({ tasks: tasks.map(taskView) });
  });

  router.get("/:id", async (req, res) => {
    const principal = await auth.require(req, "agent", "operator");
    const { waitSeconds } = validate(TaskReadQuery, req.query);
    // A long-poll ends early when the client goes away.
    const gone = new AbortController();
    res.on("close", () => gone.abort());
    const task = await broker.tasks.awaitDecision(req.params.id, principal, waitSeconds ?? 0, gone.signal);
    res.json({ task: taskView(task) });
  });

  for (const decision of ["approve", "deny"] as const) {
    router.post(`/:id/${decision}`, async (req, res) => {
      const operator = await auth.operator(req);
      const { note } = validate(DecisionBody, req.body);
      const task = await broker.tasks.decide(req.params.id, operator, decision === "approve", note);
      res.json({ task: taskView(task) });
    });
  }

  router.post("/:id/complete", async (req, res) => {
    const principal = await auth.require(req, "agent", "operator");
    const { task, revoking } = await broker.tasks.complete(req.params.id, principal);
    res.json({ task: taskView(task), revoking });
  });

  router.post("/:id/leases", async (req, res) => {
    const agent = await auth.agent(req);
    const body = validate(MintLeaseBody, req.body);
    // RFC 9449: a DPoP proof binds the credential to the proof's key.
    const binding = await mintBinding(broker, agent, {
      taskId: req.params.id,
      resource: body.resource,
      proof: req.get("dpop"),
    });
    const { lease, credential } = await broker.leases.mint(agent, req.params.id, { ...body, binding });
    // The secret travels in this one response; nothing may cache it (every /v1 answer says no-store).
    res.set("Pragma", "no-cache");
    res
      .status(201)
      .location(`/v1/leases/${lease.id}`)
      .json({ lease: leaseView(lease), credential });
  });

  return router;
}
