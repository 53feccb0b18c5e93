import { spawn } from "node:child_process";
import {
  awaitApproval,
  completeAndReport,
  DEFAULT_APPROVAL_TIMEOUT_SECONDS,
  DEFAULT_TASK_TTL_SECONDS,
  IDENTITY_OPTIONS,
  mintAll,
  TASK_OPTIONS,
} from "../agent-task.ts";
import { defaultGoal, runWhat } from "../ci-goal.ts";
import type { Command } from "../command.ts";
import { assertDistinctPrefixes, credentialEnv } from "../credential-env.ts";
import { EXIT, signalExitCode } from "../exit-codes.ts";
import { Progress } from "../progress.ts";
import { parseResourceSpecs } from "../resource-spec.ts";
import { agentClient } from "../settings.ts";
import { SignalRelay } from "../signal-relay.ts";

/** `jitkey run`: a task for one command, credentials in its environment, completed when it ends. */
export const runCommand: Command = {
  name: "run",
  synopsis: "--resource R[:SCOPES] [--resource ...] [options] -- COMMAND [ARG...]",
  summary: "Run a command with short-lived credentials in its environment (CI jobs, scripts).",
  description: [
    "Creates a task for the resources, waits for its approval, mints a credential for each",
    "resource, and runs COMMAND (directly, not through a shell) with the credentials in its",
    "environment only: JITKEY_<RESOURCE>_<FIELD> (reports-api's jwt token is",
    "JITKEY_REPORTS_API_TOKEN), JITKEY_<RESOURCE>_LEASE_ID and JITKEY_TASK_ID. When COMMAND",
    "ends, or on SIGINT/SIGTERM (passed on to COMMAND first), the task is completed and every",
    "lease revoked; jitkey then exits with COMMAND's status (128+N for signal N).",
    "",
    "Identity: --identity-token-file, else the GitHub Actions OIDC token (permissions:",
    "id-token: write), else $JITKEY_ID_TOKEN (GitLab CI id_tokens:), else $JITKEY_IDENTITY_TOKEN.",
    "Exit codes: 2 usage, 3 denied or not approved in time, 4 no or refused identity,",
    "5 broker unreachable, 126/127 COMMAND not executable/found, else COMMAND's status.",
  ].join("\n"),
  options: { ...TASK_OPTIONS, ...IDENTITY_OPTIONS },
  positionals: "command",
  examples: [
    "jitkey run --resource reports-api:read -- sh -c 'curl -H \"Authorization: Bearer $JITKEY_REPORTS_API_TOKEN\" https://reports.example/api'",
    "jitkey run --resource ledger-db:read --ttl 900 --goal 'nightly ledger export' -- ./export.sh",
  ],
  async run(args, io) {
    const specs = parseResourceSpecs(args.strings("resource"), { scopesRequired: true });
    assertDistinctPrefixes(specs.map((spec) => spec.resource));
    const ttlSeconds = args.integer("ttl", { min: 1 }, DEFAULT_TASK_TTL_SECONDS);
    const timeoutSeconds = args.integer("approval-timeout", { min: 1 }, DEFAULT_APPROVAL_TIMEOUT_SECONDS);
    const goal = args.string("goal") ?? defaultGoal(io.env, runWhat(args.command));
    const { client } = agentClient(args, io);
    const progress = new Progress(io);
    const signals = new SignalRelay();
    try {
      const task = await client.createTask({ goal, resources: specs, ttlSeconds });
      progress.say(`created task ${task.id} (${task.status}), expires ${task.expiresAt}`);
      try {
        if (signals.received) return signalExitCode(signals.received);
        await awaitApproval(client, task, progress, { timeoutSeconds, signal: signals.signal });
        const minted = await mintAll(client, task.id, specs, progress, (lease) =>
          Object.keys(credentialEnv(lease)),
        );
        if (signals.received) return signalExitCode(signals.received);
        const env: Record<string, string | undefined> = { ...io.env, JITKEY_TASK_ID: task.id };
        for (const lease of minted) Object.assign(env, credentialEnv(lease));
        return await runChild(args.command, env, signals, progress);
      } catch (error) {
        if (signals.received) return signalExitCode(signals.received);
        throw error;
      } finally {
        await completeAndReport(client, task, progress);
      }
    } finally {
      signals.dispose();
    }
  },
};

/** Runs the command with the credentials in its environment; resolves with its exit status. */
function runChild(
  command: string[],
  env: Record<string, string | undefined>,
  signals: SignalRelay,
  progress: Progress,
): Promise<number> {
  const [program, ...rest] = command as [string, ...string[]];
  return new Promise((resolve) => {
    const child = spawn(program, rest, { env, stdio: "inherit" });
    signals.relayTo(child);
    child.once("error", (error: NodeJS.ErrnoException) => {
      const notFound = error.code === "ENOENT";
      progress.say(
        `${notFound ? "command not found" : "cannot run the command"}: ${program} (${error.code})`,
      );
      resolve(notFound ? EXIT.notFound : EXIT.notExecutable);
    });
    child.once("exit", (code, signal) => resolve(code ?? (signal ? signalExitCode(signal) : EXIT.failed)));
  });
}
