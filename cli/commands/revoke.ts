import type { RevocationTarget } from "../../client/operator-client.ts";
import { BROKER_OPTION, type Command, HELP_OPTION, type ParsedArgs } from "../command.ts";
import { UsageError } from "../exit-codes.ts";
import { OUTPUT_OPTION, outputFormat, writeJson } from "../output.ts";
import { operatorClient } from "../settings.ts";

/** `jitkey revoke`: force revocation now, by lease, task, agent, resource or everything. */
export const revokeCommand: Command = {
  name: "revoke",
  synopsis:
    "(--lease ID | --task ID | --agent ID | --resource R | --all) --reason TEXT [--output table|json]",
  summary: "Force revocation of leases now (operator); live tasks it names end as revoked.",
  description: [
    "Revokes every lease the selector names, now, and ends the live tasks it names (--task,",
    "--agent, --all) as revoked. Says how many leases it hit and how many tasks it ended.",
    "Needs $JITKEY_OPERATOR_TOKEN.",
  ].join("\n"),
  options: {
    lease: { type: "string", value: "ID", help: "One lease." },
    task: { type: "string", value: "ID", help: "Every lease of a task." },
    agent: { type: "string", value: "ID", help: "Every lease of an agent, e.g. after a compromise." },
    resource: {
      type: "string",
      value: "R",
      help: "Every lease of a resource, e.g. after a backend incident.",
    },
    all: { type: "boolean", help: "Every live lease." },
    reason: { type: "string", value: "TEXT", help: "Why; required, recorded in the audit trail." },
    ...OUTPUT_OPTION,
    ...BROKER_OPTION,
    ...HELP_OPTION,
  },
  positionals: { min: 0, max: 0, name: "" },
  examples: [
    "jitkey revoke --agent 'ci:repo:acme/app:ref:refs/heads/main' --reason 'incident 42'",
    "jitkey revoke --all --reason 'signing key rotation'",
  ],
  async run(args, io) {
    const target = revocationTarget(args);
    const reason = args.string("reason")?.trim();
    if (!reason) throw new UsageError("--reason TEXT is required");
    const format = outputFormat(args);
    const revocation = await operatorClient(args, io).revoke(target, reason);
    if (format === "json") writeJson(io.stdout, { revocation });
    else {
      const leases = `${revocation.matched} lease${revocation.matched === 1 ? "" : "s"}`;
      const tasks = revocation.tasksRevoked ?? 0;
      io.stdout.write(
        `revocation ${revocation.id}: ${leases} hit, ${tasks} task${tasks === 1 ? "" : "s"} ended\n`,
      );
    }
    return 0;
  },
};

function revocationTarget(args: ParsedArgs): RevocationTarget {
  const targets: RevocationTarget[] = [];
  const lease = args.string("lease");
  const task = args.string("task");
  const agent = args.string("agent");
  const resource = args.string("resource");
  if (lease) targets.push({ leaseId: lease });
  if (task) targets.push({ taskId: task });
  if (agent) targets.push({ agentId: agent });
  if (resource) targets.push({ resource });
  if (args.flag("all")) targets.push({ all: true });
  if (targets.length !== 1)
    throw new UsageError("give exactly one of --lease, --task, --agent, --resource, --all");
  return targets[0] as RevocationTarget;
}
