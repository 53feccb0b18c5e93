import type { AuditLog } from "../audit/audit-log.ts";
import { type AgentPrincipal, actorOf } from "../identity/principal.ts";
import type { Metrics } from "../metrics.ts";
import { type DpopVerifier, InvalidDpopProofError } from "./dpop.ts";

/**
 * The key a new lease's credential is bound to, from the `DPoP` proof sent with the mint
 * (`POST /v1/tasks/:id/leases`), or `undefined` without one. A proof that does not hold is a
 * denied mint: counted, audited as `lease_denied`, and answered `400 invalid_dpop_proof`.
 */
export async function mintBinding(
  deps: { dpop: DpopVerifier; audit: AuditLog; metrics: Metrics; issuer: string },
  agent: AgentPrincipal,
  request: { taskId: string; resource: string; proof: string | undefined },
): Promise<{ jkt: string } | undefined> {
  if (request.proof === undefined) return undefined;
  try {
    return await deps.dpop.verify(request.proof, {
      method: "POST",
      url: `${deps.issuer}/v1/tasks/${request.taskId}/leases`,
    });
  } catch (error) {
    if (error instanceof InvalidDpopProofError) {
      deps.metrics.denials.inc({ decision: "lease", code: error.code });
      await deps.audit.record({
        type: "lease_denied",
        actor: actorOf(agent),
        agentId: agent.id,
        // Filed under the agent: the task is not read yet, and an invented id must not become a key.
        requestedTaskId: request.taskId,
        resource: request.resource,
        decision: "deny",
        reason: error.message,
      });
    }
    throw error;
  }
}
