import { Router } from "express";
import type { Broker } from "../broker.ts";
import type { Authenticator } from "./auth.ts";
import {
  ApproveBody,
  CreateTaskBody,
  DecisionBody,
  TaskEventBody,
  TaskId,
  TaskListQuery,
  TaskReadQuery,
  TimelineQuery,
} from "./schemas.ts";
import { idParam, validate } from "./validate.ts";
import { taskView } from "./views.ts";

/** `/v1/tasks`: create, read, list, approve/deny, complete, mint leases, record tool calls, the timeline. */
export function tasksRouter(broker: Broker, auth: Authenticator): Router {
  const router = Router();
  router.param("id", idParam(TaskId, "task"));

  router.post("/", async (req, res) => {
    const agent = await auth.agent(req);
    const body = validate(CreateTaskBody, req.body);
    const task = await broker.tasks.create(agent, body, { sourceAddress: req.ip });
    res
      .status(201)
      .location(`/v1/tasks/${task.id}`)
      .json({ task: taskView(task) });
  });

  router.get("/", async (req, res) => {
    await auth.operator(req);
    const query = validate(TaskListQuery, req.query, "query");
    const tasks = await broker.tasks.list(query);
    res.json({ tasks: tasks.map(taskView) });
  });

  router.get("/:id", async (req, res) => {
    const principal = await auth.require(req, "agent", "operator");
    const { waitSeconds } = validate(TaskReadQuery, req.query, "query");
    // A long-poll ends early when the client goes away.
    const gone = new AbortController();
    res.on("close", () => gone.abort());
    const task = await broker.tasks.awaitDecision(req.params.id, principal, waitSeconds ?? 0, gone.signal);
    res.json({ task: taskView(task) });
  });

  router.post("/:id/approve", async (req, res) => {
    // Operators only: an agent can never approve a task, its own least of all.
    const operator = await auth.operator(req);
    const approval = validate(ApproveBody, req.body);
    const task = await broker.tasks.approve(req.params.id, operator, approval);
    res.json({ task: taskView(task) });
  });

  router.post("/:id/deny", async (req, res) => {
    const operator = await auth.operator(req);
    const { note } = validate(DecisionBody, req.body);
    const task = await broker.tasks.deny(req.params.id, operator, note);
    res.json({ task: taskView(task) });
  });

  router.post("/:id/events", async (req, res) => {
    const principal = await auth.require(req, "agent", "introspector");
    const call = validate(TaskEventBody, req.body);
    const event = await broker.timeline.record(req.params.id, principal, call);
    res.status(201).json({ event });
  });

  router.get("/:id/timeline", async (req, res) => {
    const principal = await auth.require(req, "agent", "operator");
    const page = validate(TimelineQuery, req.query, "query");
    res.json({ events: await broker.timeline.timeline(req.params.id, principal, page) });
  });

  router.post("/:id/complete", async (req, res) => {
    const principal = await auth.require(req, "agent", "operator");
    const { task, revoking } = await broker.tasks.complete(req.params.id, principal);
    res.json({ task: taskView(task), revoking });
  });

  // POST /:id/leases (mint) is a hot route: served by http/hot-routes.ts, ahead of Express.

  return router;
}
