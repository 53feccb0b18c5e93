import { readFile } from "node:fs/promises";
import type { AuditEvent } from "../../client/types.ts";
import { BROKER_OPTION, type Command, type CommandIo, HELP_OPTION, type ParsedArgs } from "../command.ts";
import { UsageError } from "../exit-codes.ts";
import { OUTPUT_OPTION, outputFormat, shortTime, writeJson } from "../output.ts";
import { operatorClient } from "../settings.ts";

/** Fields shown in their own column, or never worth repeating as key=value. */
const SHOWN = new Set(["id", "at", "type", "actor"]);

/** `jitkey audit`: the trail, oldest first; `--follow` keeps printing new events. */
export const auditCommand: Command = {
  name: "audit",
  synopsis:
    "[--task ID | --agent ID | --lease ID] [--limit N] [--follow] [--output table|json]\n       jitkey audit verify [--file EXPORT.jsonl] [--jwks JWKS.json]\n       jitkey audit export > EXPORT.jsonl",
  summary: "Print the audit trail; --follow for new events; verify or export its hash chain (operator).",
  description: [
    "Prints audit events oldest first, one per line, paging through the whole trail (or the",
    "first N with --limit). --follow then polls for new events until interrupted. With",
    '--output json: {"events": [...]}, or with --follow one JSON event per line.',
    "",
    "`audit verify` asks the broker to recompute its hash chains against the checkpoints it",
    "signed; with --file it verifies an export itself, offline, with the keys in the export",
    "(or those in --jwks, fetched from the broker's /.well-known/jwks.json beforehand). Exit 0",
    "when intact, 1 naming the first broken event. `audit export` writes the trail, its",
    "signed checkpoints and the broker's public keys as JSON Lines.",
    "Needs $JITKEY_OPERATOR_TOKEN (not for verify --file).",
  ].join("\n"),
  options: {
    task: { type: "string", value: "ID", help: "Only events of this task." },
    agent: { type: "string", value: "ID", help: "Only events of this agent id." },
    lease: { type: "string", value: "ID", help: "Only events of this lease." },
    limit: { type: "string", value: "N", help: "At most N events (without --follow)." },
    follow: { type: "boolean", short: "f", help: "Keep printing new events until interrupted." },
    interval: { type: "string", value: "S", help: "Seconds between polls with --follow (default 2)." },
    file: { type: "string", value: "FILE", help: "verify: an export to check offline." },
    jwks: {
      type: "string",
      value: "FILE",
      help: "verify --file: trust these public keys, not the export's.",
    },
    ...OUTPUT_OPTION,
    ...BROKER_OPTION,
    ...HELP_OPTION,
  },
  positionals: { min: 0, max: 1, name: "verify|export" },
  examples: [
    "jitkey audit verify",
    "jitkey audit export > audit.jsonl && jitkey audit verify --file audit.jsonl",
    "jitkey audit --task tsk_0123",
    "jitkey audit --follow --output json | jq -c 'select(.type == \"lease_revoke_failed\")'",
  ],
  async run(args, io) {
    const [action] = args.positionals;
    if (action === "verify") return verifyTrail(args, io);
    if (action === "export") {
      io.stdout.write(await operatorClient(args, io).exportAudit());
      return 0;
    }
    if (action !== undefined)
      throw new UsageError(`unknown audit action ${JSON.stringify(action)}; use verify or export`);
    const format = outputFormat(args);
    const follow = args.flag("follow");
    const limit = follow ? undefined : args.integer("limit", { min: 1 });
    const intervalSeconds = args.integer("interval", { min: 1, max: 3600 }, 2);
    const operator = operatorClient(args, io);
    const stop = new AbortController();
    const onSignal = () => stop.abort();
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    try {
      const query = {
        taskId: args.string("task"),
        agentId: args.string("agent"),
        leaseId: args.string("lease"),
      };
      const events = operator.auditEvents(query, {
        follow,
        intervalMs: intervalSeconds * 1000,
        signal: stop.signal,
      });
      const collected: AuditEvent[] = [];
      let shown = 0;
      for await (const event of events) {
        if (format === "json" && !follow) collected.push(event);
        else io.stdout.write(format === "json" ? `${JSON.stringify(event)}\n` : `${auditLine(event)}\n`);
        if (limit !== undefined && ++shown >= limit) break;
      }
      if (format === "json" && !follow) writeJson(io.stdout, { events: collected });
      return 0;
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  },
};

/** `jitkey audit verify`: by the broker, or offline over an export file. */
async function verifyTrail(args: ParsedArgs, io: CommandIo): Promise<number> {
  const file = args.string("file");
  let report: {
    ok: boolean;
    events?: number;
    unsealed?: number;
    brokenAt?: string;
    reason?: string;
    shard?: number;
  };
  if (file) {
    const { verifyExport } = await import("../../broker/audit/audit-export.ts");
    const lines = (await readFile(file, "utf8"))
      .split("\n")
      .filter((line) => line.trim() !== "")
      .map((line) => JSON.parse(line));
    const jwksFile = args.string("jwks");
    report = await verifyExport(
      lines,
      jwksFile ? { jwks: JSON.parse(await readFile(jwksFile, "utf8")) } : {},
    );
  } else {
    report = await operatorClient(args, io).verifyAudit();
  }
  if (outputFormat(args) === "json") writeJson(io.stdout, report);
  else if (report.ok)
    io.stdout.write(
      `audit trail intact: ${report.events} events verified, ${report.unsealed} not sealed yet\n`,
    );
  else io.stdout.write(`audit trail BROKEN at ${report.brokenAt}: ${report.reason}\n`);
  return report.ok ? 0 : 1;
}

/** `2026-01-02 03:04:05Z  lease_issued  agent:ci:…  task=tsk_… lease=lse_… resource=…`. */
export function auditLine(event: AuditEvent): string {
  const details = Object.entries(event)
    .filter(([key, value]) => !SHOWN.has(key) && value !== undefined && value !== null)
    .map(
      ([key, value]) =>
        `${key}=${typeof value === "string" && !/\s/.test(value) ? value : JSON.stringify(value)}`,
    );
  return [shortTime(event.at), event.type.padEnd(22), event.actor.padEnd(28), ...details]
    .join("  ")
    .trimEnd();
}
