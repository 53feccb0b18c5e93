import { constants } from "node:os";
import { JitkeyClientError } from "../client/errors.ts";

/** The CLI's exit codes (docs/cli.md); `jitkey run` otherwise exits with its command's status. */
export const EXIT = {
  ok: 0,
  /** jitkey itself failed in a way no other code names (bad answer, adapter down, ...). */
  failed: 1,
  usage: 2,
  /** Policy denied, approval denied or timed out, task closed. */
  denied: 3,
  /** No identity or operator token, or the broker refused it. */
  unauthenticated: 4,
  /** The broker could not be reached or cannot serve now. */
  unreachable: 5,
  /** The command could not be executed (as shells answer). */
  notExecutable: 126,
  notFound: 127,
} as const;

/** A mistake in how the CLI was called: one line, exit 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** A token the operator commands need is missing: exit 4. */
export class MissingCredentialsError extends JitkeyClientError {
  constructor(message: string) {
    super("unauthenticated", message);
  }
}

const EXIT_BY_CODE: Record<string, number> = {
  policy_denied: EXIT.denied,
  task_closed: EXIT.denied,
  approval_denied: EXIT.denied,
  approval_timeout: EXIT.denied,
  unauthenticated: EXIT.unauthenticated,
  forbidden: EXIT.unauthenticated,
  identity_unavailable: EXIT.unauthenticated,
  broker_unreachable: EXIT.unreachable,
  unavailable: EXIT.unreachable,
};

/** The exit code for an error that ended a command. */
export function exitCodeFor(error: unknown): number {
  if (error instanceof UsageError) return EXIT.usage;
  if (error instanceof JitkeyClientError) return EXIT_BY_CODE[error.code] ?? EXIT.failed;
  return EXIT.failed;
}

/** What a shell reports for a process killed by `signal`: 128 + its number. */
export function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + (constants.signals[signal] ?? 0);
}
