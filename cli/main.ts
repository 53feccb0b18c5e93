#!/usr/bin/env node
import { type Command, type CommandIo, commandHelp, parseCommandLine } from "./command.ts";
import { auditCommand } from "./commands/audit.ts";
import { completeCommand } from "./commands/complete.ts";
import { approveCommand, denyCommand } from "./commands/decide.ts";
import { leaseCommand } from "./commands/lease.ts";
import { leasesCommand } from "./commands/leases.ts";
import { revokeCommand } from "./commands/revoke.ts";
import { runCommand } from "./commands/run.ts";
import { tasksCommand } from "./commands/tasks.ts";
import { EXIT, exitCodeFor, UsageError } from "./exit-codes.ts";

const AGENT_COMMANDS = [runCommand, leaseCommand, completeCommand];
const OPERATOR_COMMANDS = [
  tasksCommand,
  approveCommand,
  denyCommand,
  leasesCommand,
  revokeCommand,
  auditCommand,
];
const COMMANDS = new Map<string, Command>([...AGENT_COMMANDS, ...OPERATOR_COMMANDS].map((c) => [c.name, c]));

/** The broker's own commands: `jitkey` alone runs API and workers, as `npm start` does. */
const SERVER_COMMANDS = new Set(["serve", "worker"]);

/**
 * The `jitkey` command: the broker (`jitkey`, `jitkey serve`, `jitkey worker`) and its client
 * (`jitkey run`, `jitkey approve`, ...). Returns the exit code; the server forms never return.
 */
async function main(argv: string[], io: CommandIo): Promise<number | "server"> {
  const [name, ...rest] = argv;
  if (name === undefined || SERVER_COMMANDS.has(name)) {
    // Imported only here: client commands should not load Express, BullMQ and the adapters.
    const { runServer } = await import("../broker/main.ts");
    runServer(argv);
    return "server";
  }
  if (name === "help" || name === "--help" || name === "-h") {
    const about = rest[0] === undefined ? undefined : COMMANDS.get(rest[0]);
    io.stdout.write(about ? commandHelp(about) : overallHelp());
    return EXIT.ok;
  }
  const command = COMMANDS.get(name);
  if (!command) {
    io.stderr.write(`jitkey: unknown command ${JSON.stringify(name)} (jitkey --help lists them)\n`);
    return EXIT.usage;
  }
  try {
    const parsed = parseCommandLine(command, rest);
    if (parsed === "help") {
      io.stdout.write(commandHelp(command));
      return EXIT.ok;
    }
    return await command.run(parsed, io);
  } catch (error) {
    const code = exitCodeFor(error);
    if (error instanceof UsageError)
      io.stderr.write(`jitkey ${command.name}: ${error.message} (jitkey ${command.name} --help)\n`);
    else {
      const label = (error as { code?: unknown }).code;
      io.stderr.write(
        `jitkey ${command.name}: ${typeof label === "string" ? `${label}: ` : ""}${(error as Error).message}\n`,
      );
    }
    return code;
  }
}

function overallHelp(): string {
  const list = (commands: Command[]) => commands.map((c) => `  ${c.name.padEnd(10)}${c.summary}`);
  return [
    "Usage: jitkey [COMMAND] [options]",
    "",
    "Just-in-time, task-scoped, short-lived credentials.",
    "",
    "Broker:",
    "  (none)    API and revocation workers in one process (npm start)",
    "  serve     API only (needs REDIS_URL)",
    "  worker    Revocation workers only (needs REDIS_URL)",
    "",
    "Agents and CI (identity: --identity-token-file, GitHub Actions OIDC, $JITKEY_ID_TOKEN, $JITKEY_IDENTITY_TOKEN):",
    ...list(AGENT_COMMANDS),
    "",
    "Operators ($JITKEY_OPERATOR_TOKEN):",
    ...list(OPERATOR_COMMANDS),
    "",
    "Broker address: --broker URL or $JITKEY_URL. `jitkey COMMAND --help` shows a command's options and examples.",
    "Exit codes: 0 ok, 2 usage, 3 denied (policy, approval denied or timed out, task closed),",
    "4 unauthenticated, 5 broker unreachable; `jitkey run` otherwise exits with its command's status.",
    "",
    "Example:",
    "  JITKEY_URL=https://jitkey.example.com jitkey run --resource reports-api:read -- ./make-report.sh",
    "",
  ].join("\n");
}

const io: CommandIo = { env: process.env, stdout: process.stdout, stderr: process.stderr };
main(process.argv.slice(2), io).then(
  (code) => {
    if (code === "server") return;
    // Exit once stdout has drained, so captured output (`jitkey lease`) is never cut short.
    process.exitCode = code;
    process.stdout.write("", () => process.exit(code));
  },
  (error: unknown) => {
    process.stderr.write(`jitkey: ${(error as Error).message}\n`);
    process.exit(EXIT.failed);
  },
);
