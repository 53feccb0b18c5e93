import type { JitkeyClient } from "../client/agent-client.ts";
import { TaskClosedError } from "../client/errors.ts";
import type { MintedLease, Task } from "../client/types.ts";
import { BROKER_OPTION, HELP_OPTION, type OptionSpec } from "./command.ts";
import type { Progress } from "./progress.ts";
import type { ResourceSpec } from "./resource-spec.ts";

/** A task lives this long unless `--ttl` says otherwise: long enough for a CI step, short if the CLI dies. */
export const DEFAULT_TASK_TTL_SECONDS = 1800;
/** How long the CLI waits for an operator unless `--approval-timeout` says otherwise. */
export const DEFAULT_APPROVAL_TIMEOUT_SECONDS = 600;

/** Options of the commands that act as an agent: which identity, which broker. */
export const IDENTITY_OPTIONS: Record<string, OptionSpec> = {
  "identity-token-file": {
    type: "string",
    value: "FILE",
    help: "Read the identity JWT from FILE on every request (Kubernetes projected token, SPIFFE JWT-SVID).",
  },
  audience: {
    type: "string",
    value: "AUD",
    help: "The audience to ask GitHub Actions for (default: $JITKEY_AUDIENCE, else jitkey).",
  },
  ...BROKER_OPTION,
  ...HELP_OPTION,
};

/** Options of the commands that create a task. */
export const TASK_OPTIONS: Record<string, OptionSpec> = {
  resource: {
    type: "string",
    multiple: true,
    value: "R[:SCOPES]",
    help: "A resource and the scopes to ask for, e.g. reports-api:read,write.",
  },
  goal: {
    type: "string",
    value: "TEXT",
    help: "What the task is for, shown to approvers (default: names the CI run, or the program and host).",
  },
  ttl: {
    type: "string",
    value: "S",
    help: `The task's lifetime in seconds; every lease ends with it (default ${DEFAULT_TASK_TTL_SECONDS}).`,
  },
  "approval-timeout": {
    type: "string",
    value: "S",
    help: `Give up (exit 3) when nobody approves within S seconds (default ${DEFAULT_APPROVAL_TIMEOUT_SECONDS}).`,
  },
};

/** Waits for `task`'s approval, telling the person or CI log what is going on. */
export async function awaitApproval(
  client: JitkeyClient,
  task: Task,
  progress: Progress,
  options: { timeoutSeconds: number; signal: AbortSignal },
): Promise<Task> {
  if (task.status === "pending")
    progress.waitingForApproval(
      task.id,
      `jitkey approve ${task.id} --broker ${client.broker}`,
      options.timeoutSeconds,
    );
  try {
    const approved = await client.waitForApproval(task, options);
    progress.say(`task ${task.id} approved by ${approved.approvedBy ?? "policy"}`);
    return approved;
  } finally {
    progress.doneWaiting();
  }
}

/** Mints one lease per resource, in order, and says which variables each one gives. */
export async function mintAll(
  client: JitkeyClient,
  taskId: string,
  specs: ResourceSpec[],
  progress: Progress,
  names: (minted: MintedLease) => string[],
): Promise<MintedLease[]> {
  const minted: MintedLease[] = [];
  for (const spec of specs) {
    const lease = await client.mint(taskId, spec.resource, spec.scopes.length ? { scopes: spec.scopes } : {});
    minted.push(lease);
    progress.say(
      `minted ${spec.resource} (lease ${lease.lease.id}, expires ${lease.lease.expiresAt}): ${names(lease).join(" ")}`,
    );
  }
  return minted;
}

/** Completes the task and says so; a failure is reported, not thrown (the task's TTL still ends it). */
export async function completeAndReport(client: JitkeyClient, task: Task, progress: Progress): Promise<void> {
  try {
    const { revoking } = await client.complete(task.id);
    progress.say(`task ${task.id} completed; ${revoking} lease${revoking === 1 ? "" : "s"} revoking`);
  } catch (error) {
    if (error instanceof TaskClosedError) {
      progress.say(`task ${task.id} had already ended${error.taskStatus ? ` (${error.taskStatus})` : ""}`);
      return;
    }
    progress.say(
      `could not complete task ${task.id} (${(error as { code?: string }).code ?? "error"}): ${(error as Error).message}; its leases end with the task at ${task.expiresAt}`,
    );
  }
}
