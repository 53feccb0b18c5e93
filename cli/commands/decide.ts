import type { Task } from "../../client/types.ts";
import { BROKER_OPTION, type Command, HELP_OPTION } from "../command.ts";
import { OUTPUT_OPTION, outputFormat, writeJson } from "../output.ts";
import { operatorClient } from "../settings.ts";

/** `jitkey approve` and `jitkey deny`: an operator's decision on a pending task. */
function decisionCommand(decision: "approve" | "deny"): Command {
  const verb = decision === "approve" ? "Approve" : "Deny";
  return {
    name: decision,
    synopsis: "ID [--note TEXT] [--output table|json]",
    summary: `${verb} a pending task (operator).`,
    description: [
      `${verb}s pending task ID; the note is recorded with the decision and shown to the agent.`,
      "Needs $JITKEY_OPERATOR_TOKEN. Exits 3 when the task is no longer pending.",
    ].join("\n"),
    options: {
      note: { type: "string", value: "TEXT", help: "Why, recorded in the task and the audit trail." },
      ...OUTPUT_OPTION,
      ...BROKER_OPTION,
      ...HELP_OPTION,
    },
    positionals: { min: 1, max: 1, name: "the task ID" },
    examples: [
      `jitkey ${decision} tsk_0123 --note '${decision === "approve" ? "release 1.4 export, fine" : "not during the freeze"}'`,
    ],
    async run(args, io) {
      const taskId = args.positionals[0] as string;
      const format = outputFormat(args);
      const operator = operatorClient(args, io);
      const options = { note: args.string("note") };
      const task: Task =
        decision === "approve"
          ? await operator.approve(taskId, options)
          : await operator.deny(taskId, options);
      if (format === "json") writeJson(io.stdout, { task });
      else io.stdout.write(`task ${task.id} ${task.status}: ${task.goal}\n`);
      return 0;
    },
  };
}

export const approveCommand = decisionCommand("approve");
export const denyCommand = decisionCommand("deny");
