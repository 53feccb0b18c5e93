import { IDENTITY_OPTIONS } from "../agent-task.ts";
import type { Command } from "../command.ts";
import { OUTPUT_OPTION, outputFormat, writeJson } from "../output.ts";
import { agentClient, operatorClient } from "../settings.ts";

/** `jitkey complete`: end a task (usually one `jitkey lease` left open); every lease is revoked. */
export const completeCommand: Command = {
  name: "complete",
  synopsis: "ID [--operator] [options]",
  summary: "Complete a task: every lease of it is revoked (after jitkey lease).",
  description: [
    "Completes task ID as its agent (with the same identity sources as `jitkey run`), or with",
    "--operator as an operator ($JITKEY_OPERATOR_TOKEN). Every lease of the task is revoked.",
    "Exits 3 when the task had already ended.",
  ].join("\n"),
  options: {
    operator: { type: "boolean", help: "Complete it as an operator ($JITKEY_OPERATOR_TOKEN)." },
    ...OUTPUT_OPTION,
    ...IDENTITY_OPTIONS,
  },
  positionals: { min: 1, max: 1, name: "the task ID" },
  examples: ['jitkey complete "$JITKEY_TASK_ID"', "jitkey complete tsk_0123 --operator"],
  async run(args, io) {
    const taskId = args.positionals[0] as string;
    const format = outputFormat(args);
    const result = args.flag("operator")
      ? await operatorClient(args, io).completeTask(taskId)
      : await agentClient(args, io).client.complete(taskId);
    if (format === "json") writeJson(io.stdout, result);
    else
      io.stdout.write(
        `task ${result.task.id} completed; ${result.revoking} lease${result.revoking === 1 ? "" : "s"} revoking\n`,
      );
    return 0;
  },
};
