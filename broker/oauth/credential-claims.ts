import { hash } from "node:crypto";
import type { Classification } from "../config.ts";
import type { Lease } from "../leases/lease.ts";
import type { Task } from "../tasks/task.ts";

/**
 * Why a credential exists, in a form downstream services can use without being told the goal:
 * the SHA-256 (hex) of the task's goal as the broker stores it, and the highest data
 * classification the task was approved for. The goal text itself stays out of tokens, which
 * travel through proxies, logs and tool servers; whoever knows the goal can check the digest.
 */
export interface PurposeClaim {
  goal_sha256: string;
  classification: Classification;
}

/** RFC 8693 §4.1 `act`: the current actor, with the actors before it nested inside. */
export interface ActClaim {
  sub: string;
  act?: ActClaim;
}

/** Purposes already worked out, by task record: introspection answers with one many times a second. */
const purposes = new WeakMap<object, PurposeClaim>();

/** The `purpose` claim of a task's credentials. */
export function purposeOf(task: Pick<Task, "goal" | "dataClassification">): PurposeClaim {
  let purpose = purposes.get(task);
  if (purpose?.classification !== task.dataClassification) {
    purpose = { goal_sha256: hash("sha256", task.goal, "hex"), classification: task.dataClassification };
    purposes.set(task, purpose);
  }
  return purpose;
}

/** The `act` claim for a chain of actors, current first; none for a lease minted directly. */
export function actClaim(actors: readonly string[] | undefined): ActClaim | undefined {
  if (!actors || actors.length === 0) return undefined;
  return actors.reduceRight<ActClaim | undefined>(
    (prior, sub) => (prior ? { sub, act: prior } : { sub }),
    undefined,
  );
}

/**
 * The claims a token credential carries besides the adapter's own: `purpose` always; for a
 * delegated lease, `act` and the `client_id` of the agent that exchanged it (RFC 8693 §4.3).
 */
export function credentialClaims(
  task: Pick<Task, "goal" | "dataClassification">,
  lease: Pick<Lease, "actors" | "delegatedBy">,
): Record<string, unknown> {
  const act = actClaim(lease.actors);
  return {
    purpose: purposeOf(task),
    ...(act ? { act } : {}),
    ...(lease.delegatedBy ? { client_id: lease.delegatedBy } : {}),
  };
}
