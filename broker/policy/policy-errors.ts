import { PolicyDeniedError } from "../errors.ts";

/**
 * A policy that cannot be loaded: a YAML rule Cedar cannot express, a `.cedar` file that
 * does not parse or validate against the schema, clashing policy ids. The message names
 * the file and line (or the config entry) and is safe to log.
 */
export class PolicyLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PolicyLoadError";
  }
}

/**
 * A policy denial with the ids of the policies that decided it: the forbid policies that
 * matched, or none when no policy permitted. The ids are for the audit trail; the HTTP body
 * carries only `reason`, as for every {@link PolicyDeniedError}.
 */
export class PolicyDenialError extends PolicyDeniedError {
  constructor(
    reason: string,
    readonly policyIds: readonly string[] = [],
  ) {
    super(reason);
  }
}

/** The policy ids behind a denial, `[]` for a denial that did not come from a decision. */
export function policyIdsOf(error: unknown): readonly string[] {
  return error instanceof PolicyDenialError ? error.policyIds : [];
}
