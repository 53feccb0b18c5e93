import type { Task } from "../../client/types.ts";
import { BROKER_OPTION, type Command, HELP_OPTION } from "../command.ts";
import { OUTPUT_OPTION, outputFormat, writeJson } from "../output.ts";
import { parseResourceSpecs } from "../resource-spec.ts";
import { operatorClient } from "../settings.ts";

/** `jitkey approve` and `jitkey deny`: an operator's decision on a pending task. */
function decisionCommand(decision: "approve" | "deny"): Command {
  const verb = decision === "approve" ? "Approve" : "Deny";
  return {
    name: decision,
    synopsis:
      decision === "approve"
        ? "ID [--note TEXT] [--resource R:scope[,scope] ...] [--ttl S] [--output table|json]"
        : "ID [--note TEXT] [--output table|json]",
    summary: `${verb} a pending task (operator).`,
    description: [
      `${verb}s pending task ID; the note is recorded with the decision and shown to the agent.`,
      ...(decision === "approve"
        ? [
            "--resource narrows the approval to those resources and scopes (each must be the task's;",
            "resources not named are dropped); --ttl ends the task at most S seconds from now.",
            "A task on restricted data needs two different operators' approvals.",
          ]
        : []),
      "Needs $JITKEY_OPERATOR_TOKEN. Exits 3 when the task is no longer pending.",
    ].join("\n"),
    options: {
      note: { type: "string", value: "TEXT", help: "Why, recorded in the task and the audit trail." },
      ...(decision === "approve"
        ? {
            resource: {
              type: "string" as const,
              multiple: true,
              value: "R:SCOPES",
              help: "Approve only this resource with these scopes (repeatable).",
            },
            ttl: { type: "string" as const, value: "S", help: "End the task at most S seconds from now." },
          }
        : {}),
      ...OUTPUT_OPTION,
      ...BROKER_OPTION,
      ...HELP_OPTION,
    },
    positionals: { min: 1, max: 1, name: "the task ID" },
    examples: [
      `jitkey ${decision} tsk_0123 --note '${decision === "approve" ? "release 1.4 export, fine" : "not during the freeze"}'`,
      ...(decision === "approve" ? ["jitkey approve tsk_0123 --resource reports-api:read --ttl 600"] : []),
    ],
    async run(args, io) {
      const taskId = args.positionals[0] as string;
      const format = outputFormat(args);
      const operator = operatorClient(args, io);
      const note = args.string("note");
      const task: Task =
        decision === "approve"
          ? await operator.approve(taskId, {
              note,
              ...(args.strings("resource").length > 0
                ? { resources: parseResourceSpecs(args.strings("resource"), { scopesRequired: true }) }
                : {}),
              ttlSeconds: args.integer("ttl", { min: 1 }),
            })
          : await operator.deny(taskId, { note });
      if (format === "json") writeJson(io.stdout, { task });
      else io.stdout.write(`task ${task.id} ${task.status}: ${task.goal}\n`);
      return 0;
    },
  };
}

export const approveCommand = decisionCommand("approve");
export const denyCommand = decisionCommand("deny");
