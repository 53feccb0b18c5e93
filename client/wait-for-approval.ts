import { setTimeout as sleep } from "node:timers/promises";
import { ApprovalDeniedError, ApprovalTimeoutError, TaskClosedError } from "./errors.ts";
import type { Task } from "./types.ts";

/** The longest `waitSeconds` the API accepts. */
const MAX_WAIT_SECONDS = 60;
/** Pauses between polls when the broker answers at once instead of holding the request. */
const FIRST_PAUSE_MS = 1000;
const LONGEST_PAUSE_MS = 5000;

export interface WaitForTaskOptions {
  timeoutSeconds: number;
  signal?: AbortSignal | undefined;
  /** Reads the task, asking the broker to hold the answer up to `waitSeconds`. */
  poll: (waitSeconds: number, signal: AbortSignal | undefined) => Promise<Task>;
}

/**
 * Polls until the task leaves `pending`. Asks for a long poll each time; a broker without
 * long polling (or a proxy that cuts it short) answers at once, and then the loop pauses,
 * 1 s growing to 5 s, so a waiting CI job never hammers the broker.
 */
export async function waitForTask(task: Task, options: WaitForTaskOptions): Promise<Task> {
  const deadline = Date.now() + options.timeoutSeconds * 1000;
  let pauseMs = FIRST_PAUSE_MS;
  let current = task;
  for (;;) {
    if (current.status === "approved") return current;
    if (current.status === "denied")
      throw new ApprovalDeniedError(current.id, current.deniedBy, current.note);
    if (current.status !== "pending")
      throw new TaskClosedError(409, {
        code: "task_closed",
        message: `task ${current.id} is ${current.status}`,
        status: current.status,
      });
    const remainingMs = deadline - Date.now();
    if (remainingMs <= 0) throw new ApprovalTimeoutError(current.id, options.timeoutSeconds);
    const waitSeconds = Math.max(1, Math.min(MAX_WAIT_SECONDS, Math.floor(remainingMs / 1000)));
    const asked = Date.now();
    current = await options.poll(waitSeconds, options.signal);
    const answeredEarly = Date.now() - asked < waitSeconds * 1000 - 500;
    if (current.status === "pending" && answeredEarly) {
      await sleep(Math.min(pauseMs, Math.max(0, deadline - Date.now())), undefined, {
        signal: options.signal,
      });
      pauseMs = Math.min(LONGEST_PAUSE_MS, pauseMs * 2);
    } else {
      pauseMs = FIRST_PAUSE_MS;
    }
  }
}
