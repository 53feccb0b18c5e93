import { SignJWT } from "jose";
import { z } from "zod";
import type { AdapterFactory, CredentialAdapter, IssuedCredential, IssueRequest } from "../types.ts";
import { SIGNING_ALGORITHMS } from "./signing-keys.ts";

/** Resource `options` for the `jwt` adapter. */
export const JwtAdapterOptions = z
  .object({
    /** The `aud` of issued tokens: the resource server that accepts them. */
    audience: z.string().min(1),
    algorithm: z.enum(SIGNING_ALGORITHMS).default("ES256"),
  })
  .strict();

/**
 * Broker-signed access tokens (RFC 9068 `at+jwt`). Nothing is created in a backend: the
 * token's `jti` is the lease id, and revocation takes effect through introspection
 * (`/v1/introspect`), which answers `active: false` as soon as the lease or its task is no
 * longer live. Tokens carry the request's extra `claims` (purpose, `act`) and, when bound to a
 * key, `cnf.jkt` (RFC 9449): such a credential is `{type: "dpop", ...}`.
 */
export const createJwtAdapter: AdapterFactory = (options, context): CredentialAdapter => {
  const { audience, algorithm } = JwtAdapterOptions.parse(options ?? {});
  const key = context.signingKeys.keyFor(algorithm);
  return {
    kind: "jwt",
    capabilities: { revocation: "introspection", renewable: false, tokenClaims: true, issuesLocally: true },
    async issue(request: IssueRequest): Promise<IssuedCredential> {
      const expiresAtSeconds = Math.floor(request.expiresAt.getTime() / 1000);
      const token = await new SignJWT({
        client_id: request.agentId,
        // The request's claims first: none of them may replace the adapter's own below.
        ...request.claims,
        task_id: request.taskId,
        scope: request.scopes.join(" "),
        ...(request.binding ? { cnf: { jkt: request.binding.jkt } } : {}),
      })
        .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "at+jwt" })
        .setIssuer(context.issuer)
        .setAudience(audience)
        .setSubject(request.agentId)
        .setJti(request.leaseId)
        .setIssuedAt(Math.floor(context.clock.now() / 1000))
        .setNotBefore(Math.floor(context.clock.now() / 1000))
        .setExpirationTime(expiresAtSeconds)
        .sign(key.privateKey);
      const expiresAt = new Date(expiresAtSeconds * 1000);
      const type = request.binding ? "dpop" : "bearer";
      return { credential: { type, token, expiresAt: expiresAt.toISOString() }, expiresAt };
    },
    async revoke() {
      // Nothing to delete: introspection reads the lease's status.
    },
    async health() {
      return { ok: true };
    },
  };
};
