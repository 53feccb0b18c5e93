import type { MintedLease, Task } from "../../client/types.ts";
import {
  awaitApproval,
  completeAndReport,
  DEFAULT_APPROVAL_TIMEOUT_SECONDS,
  DEFAULT_TASK_TTL_SECONDS,
  IDENTITY_OPTIONS,
  mintAll,
  TASK_OPTIONS,
} from "../agent-task.ts";
import { defaultGoal } from "../ci-goal.ts";
import type { Command } from "../command.ts";
import { assertDistinctPrefixes, credentialEnv } from "../credential-env.ts";
import { signalExitCode, UsageError } from "../exit-codes.ts";
import { writeJson } from "../output.ts";
import { Progress } from "../progress.ts";
import { parseResourceSpecs } from "../resource-spec.ts";
import { agentClient } from "../settings.ts";
import { SignalRelay } from "../signal-relay.ts";

const FORMATS = ["env", "dotenv", "json"] as const;

/** `jitkey lease`: mint credentials and print them for a caller to capture, without running anything. */
export const leaseCommand: Command = {
  name: "lease",
  synopsis: "--resource R[:SCOPES] [--resource ...] [--task ID] [--output env|dotenv|json] [options]",
  summary: "Mint credentials and print them for capture (eval, a dotenv file, JSON).",
  description: [
    "Mints a credential for each resource and writes them to stdout: `env` as shell `export`",
    "lines for eval, `dotenv` as NAME=value lines, `json` as {task, leases, env}. Variable",
    "names are those of `jitkey run`, plus JITKEY_TASK_ID. Refuses to write to a terminal:",
    "capture the output.",
    "",
    "Without --task it creates a task (scopes required) and waits for its approval; with",
    "--task it mints for that task (scopes optional: the task's). Either way the task stays",
    "open after jitkey exits: the caller completes it with `jitkey complete ID` when done,",
    "which revokes every lease; if nobody does, the task's TTL (--ttl) ends it.",
  ].join("\n"),
  options: {
    ...TASK_OPTIONS,
    task: { type: "string", value: "ID", help: "Mint for this task instead of creating one." },
    output: { type: "string", value: "FORMAT", help: "env (default), dotenv or json." },
    ...IDENTITY_OPTIONS,
  },
  positionals: { min: 0, max: 0, name: "" },
  examples: [
    'eval "$(jitkey lease --resource reports-api:read)" && curl -H "Authorization: Bearer $JITKEY_REPORTS_API_TOKEN" https://reports.example/api; jitkey complete "$JITKEY_TASK_ID"',
    "jitkey lease --resource ledger-db:read --output dotenv > .env.jitkey",
  ],
  async run(args, io) {
    const format = args.choice("output", FORMATS, "env");
    const taskId = args.string("task");
    const specs = parseResourceSpecs(args.strings("resource"), { scopesRequired: taskId === undefined });
    assertDistinctPrefixes(specs.map((spec) => spec.resource));
    const ttlSeconds = args.integer("ttl", { min: 1 }, DEFAULT_TASK_TTL_SECONDS);
    const timeoutSeconds = args.integer("approval-timeout", { min: 1 }, DEFAULT_APPROVAL_TIMEOUT_SECONDS);
    if (io.stdout.isTTY)
      throw new UsageError(
        'refusing to print credentials to a terminal; capture them: eval "$(jitkey lease ...)", or redirect to a file',
      );
    const { client } = agentClient(args, io);
    const progress = new Progress(io);
    const signals = new SignalRelay();
    try {
      const created = taskId === undefined;
      const task = created
        ? await client.createTask({
            goal: args.string("goal") ?? defaultGoal(io.env, "jitkey lease"),
            resources: specs,
            ttlSeconds,
          })
        : await client.getTask(taskId);
      if (created) progress.say(`created task ${task.id} (${task.status}), expires ${task.expiresAt}`);
      let minted: MintedLease[];
      try {
        await awaitApproval(client, task, progress, { timeoutSeconds, signal: signals.signal });
        minted = await mintAll(client, task.id, specs, progress, (lease) =>
          Object.keys(credentialEnv(lease)),
        );
      } catch (error) {
        // A task this command created and could not use is closed, so nothing lingers for it.
        if (created) await completeAndReport(client, task, progress);
        if (signals.received) return signalExitCode(signals.received);
        throw error;
      }
      if (signals.received) {
        // Interrupted while minting: nobody will capture these credentials, so end them now.
        if (created) await completeAndReport(client, task, progress);
        return signalExitCode(signals.received);
      }
      writeCredentials(io.stdout, format, task, minted);
      progress.say(
        `task ${task.id} stays open: run \`jitkey complete ${task.id}\` when done (else it ends at ${task.expiresAt})`,
      );
      return 0;
    } finally {
      signals.dispose();
    }
  },
};

function writeCredentials(
  out: NodeJS.WritableStream,
  format: (typeof FORMATS)[number],
  task: Task,
  minted: MintedLease[],
): void {
  const env: Record<string, string> = { JITKEY_TASK_ID: task.id };
  for (const lease of minted) Object.assign(env, credentialEnv(lease));
  if (format === "json") {
    writeJson(out, { task, leases: minted, env });
    return;
  }
  const line = format === "env" ? envLine : dotenvLine;
  out.write(
    `${Object.entries(env)
      .map(([name, value]) => line(name, value))
      .join("\n")}\n`,
  );
}

/** `export NAME='value'`, single-quoted so the shell expands nothing. */
function envLine(name: string, value: string): string {
  return `export ${name}='${value.replace(/'/g, `'\\''`)}'`;
}

/** `NAME=value` when the value needs no quoting, else double-quoted with `\\`, `"` and newlines escaped. */
function dotenvLine(name: string, value: string): string {
  if (/^[A-Za-z0-9_./:+=@,-]*$/.test(value)) return `${name}=${value}`;
  return `${name}="${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`;
}
