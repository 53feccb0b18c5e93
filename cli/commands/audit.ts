import type { AuditEvent } from "../../client/types.ts";
import { BROKER_OPTION, type Command, HELP_OPTION } from "../command.ts";
import { OUTPUT_OPTION, outputFormat, shortTime, writeJson } from "../output.ts";
import { operatorClient } from "../settings.ts";

/** Fields shown in their own column, or never worth repeating as key=value. */
const SHOWN = new Set(["id", "at", "type", "actor"]);

/** `jitkey audit`: the trail, oldest first; `--follow` keeps printing new events. */
export const auditCommand: Command = {
  name: "audit",
  synopsis: "[--task ID | --agent ID | --lease ID] [--limit N] [--follow] [--output table|json]",
  summary: "Print the audit trail, oldest first; --follow for new events (operator).",
  description: [
    "Prints audit events oldest first, one per line, paging through the whole trail (or the",
    "first N with --limit). --follow then polls for new events until interrupted. With",
    '--output json: {"events": [...]}, or with --follow one JSON event per line.',
    "Needs $JITKEY_OPERATOR_TOKEN.",
  ].join("\n"),
  options: {
    task: { type: "string", value: "ID", help: "Only events of this task." },
    agent: { type: "string", value: "ID", help: "Only events of this agent id." },
    lease: { type: "string", value: "ID", help: "Only events of this lease." },
    limit: { type: "string", value: "N", help: "At most N events (without --follow)." },
    follow: { type: "boolean", short: "f", help: "Keep printing new events until interrupted." },
    interval: { type: "string", value: "S", help: "Seconds between polls with --follow (default 2)." },
    ...OUTPUT_OPTION,
    ...BROKER_OPTION,
    ...HELP_OPTION,
  },
  positionals: { min: 0, max: 0, name: "" },
  examples: [
    "jitkey audit --task tsk_0123",
    "jitkey audit --follow --output json | jq -c 'select(.type == \"lease_revoke_failed\")'",
  ],
  async run(args, io) {
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
