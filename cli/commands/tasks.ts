import type { Task, TaskStatus } from "../../client/types.ts";
import { BROKER_OPTION, type Command, HELP_OPTION } from "../command.ts";
import { type Column, OUTPUT_OPTION, outputFormat, shortTime, writeJson, writeTable } from "../output.ts";
import { operatorClient } from "../settings.ts";

const TASK_STATUSES: readonly TaskStatus[] = [
  "pending",
  "approved",
  "denied",
  "completed",
  "expired",
  "revoked",
];

const TASK_COLUMNS: Column<Task>[] = [
  { heading: "ID", cell: (task) => task.id },
  { heading: "STATUS", cell: (task) => task.status },
  { heading: "AGENT", cell: (task) => task.agentId, maxWidth: 48 },
  {
    heading: "RESOURCES",
    cell: (task) => task.resources.map((r) => `${r.resource}:${r.scopes.join(",")}`).join(" "),
    maxWidth: 40,
  },
  { heading: "CLASS", cell: (task) => task.dataClassification },
  { heading: "CREATED", cell: (task) => shortTime(task.createdAt) },
  { heading: "GOAL", cell: (task) => task.goal, maxWidth: 60 },
];

/** `jitkey tasks`: what agents asked for, newest first. */
export const tasksCommand: Command = {
  name: "tasks",
  synopsis: "[--status S] [--agent ID] [--limit N] [--output table|json]",
  summary: "List tasks, newest first (operator); --status pending for the approval queue.",
  description: "Lists tasks newest first. Needs $JITKEY_OPERATOR_TOKEN.",
  options: {
    status: { type: "string", value: "S", help: `Only tasks in this status: ${TASK_STATUSES.join(", ")}.` },
    agent: { type: "string", value: "ID", help: "Only tasks of this agent id." },
    limit: { type: "string", value: "N", help: "At most N tasks (1-1000, default 100)." },
    ...OUTPUT_OPTION,
    ...BROKER_OPTION,
    ...HELP_OPTION,
  },
  positionals: { min: 0, max: 0, name: "" },
  examples: [
    "jitkey tasks --status pending",
    "jitkey tasks --agent 'ci:repo:acme/app:ref:refs/heads/main' --output json",
  ],
  async run(args, io) {
    const format = outputFormat(args);
    const status =
      args.string("status") === undefined ? undefined : args.choice("status", TASK_STATUSES, "pending");
    const limit = args.integer("limit", { min: 1, max: 1000 });
    const tasks = await operatorClient(args, io).listTasks({ status, agentId: args.string("agent"), limit });
    if (format === "json") writeJson(io.stdout, { tasks });
    else writeTable(io.stdout, TASK_COLUMNS, tasks, status ? `no ${status} tasks` : "no tasks");
    return 0;
  },
};
