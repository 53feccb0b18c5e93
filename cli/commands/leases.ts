import type { Lease, LeaseStatus } from "../../client/types.ts";
import { BROKER_OPTION, type Command, HELP_OPTION } from "../command.ts";
import { type Column, OUTPUT_OPTION, outputFormat, shortTime, writeJson, writeTable } from "../output.ts";
import { operatorClient } from "../settings.ts";

const LEASE_STATUSES: readonly LeaseStatus[] = ["issuing", "active", "revoking", "revoked", "revoke_failed"];

const LEASE_COLUMNS: Column<Lease>[] = [
  { heading: "ID", cell: (lease) => lease.id },
  { heading: "STATUS", cell: (lease) => lease.status },
  { heading: "RESOURCE", cell: (lease) => lease.resource },
  { heading: "SCOPES", cell: (lease) => lease.scopes.join(",") },
  { heading: "TASK", cell: (lease) => lease.taskId },
  { heading: "AGENT", cell: (lease) => lease.agentId, maxWidth: 48 },
  { heading: "EXPIRES", cell: (lease) => shortTime(lease.expiresAt) },
  { heading: "REVOKED", cell: (lease) => lease.revokeReason },
];

/** `jitkey leases`: credentials minted, live or ended (never the secrets). */
export const leasesCommand: Command = {
  name: "leases",
  synopsis: "[--status S] [--task ID] [--agent ID] [--resource R] [--limit N] [--output table|json]",
  summary: "List leases (operator), filtered by status, task, agent or resource.",
  description:
    "Lists leases: which credential was minted for which task and agent, and how it ended. Never the secrets. Needs $JITKEY_OPERATOR_TOKEN.",
  options: {
    status: { type: "string", value: "S", help: `Only leases in this status: ${LEASE_STATUSES.join(", ")}.` },
    task: { type: "string", value: "ID", help: "Only leases of this task." },
    agent: { type: "string", value: "ID", help: "Only leases of this agent id." },
    resource: { type: "string", value: "R", help: "Only leases of this resource." },
    limit: { type: "string", value: "N", help: "At most N leases (1-1000, default 100)." },
    ...OUTPUT_OPTION,
    ...BROKER_OPTION,
    ...HELP_OPTION,
  },
  positionals: { min: 0, max: 0, name: "" },
  examples: [
    "jitkey leases --status active --resource reports-api",
    "jitkey leases --task tsk_0123 --output json",
  ],
  async run(args, io) {
    const format = outputFormat(args);
    const status =
      args.string("status") === undefined ? undefined : args.choice("status", LEASE_STATUSES, "active");
    const leases = await operatorClient(args, io).listLeases({
      status,
      taskId: args.string("task"),
      agentId: args.string("agent"),
      resource: args.string("resource"),
      limit: args.integer("limit", { min: 1, max: 1000 }),
    });
    if (format === "json") writeJson(io.stdout, { leases });
    else writeTable(io.stdout, LEASE_COLUMNS, leases, "no leases");
    return 0;
  },
};
