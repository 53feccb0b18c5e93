import { type Request, type Response, Router } from "express";
import type { Broker } from "../broker.ts";
import { ForbiddenError, NotFoundError, UnauthenticatedError } from "../errors.ts";
import type { Authenticator } from "../http/auth.ts";
import type { AgentPrincipal } from "../identity/principal.ts";
import { authorizationServerMetadata, protectedResourceMetadata } from "./metadata.ts";
import { OAuthError } from "./oauth-error.ts";
import { clientAssertionOf } from "./token-request.ts";

/**
 * The OAuth side of the broker: `POST /v1/token` (RFC 8693 token exchange), RFC 8414
 * authorization server metadata, and RFC 9728 protected resource metadata for resources.
 * Token endpoint errors of the protocol (400, 401) are in the OAuth shape
 * `{error, error_description}`; operational ones (429, 5xx) keep the jitkey error shape.
 */
export function oauthRouter(broker: Broker, auth: Authenticator): Router {
  const router = Router();
  const delegation = broker.config.delegation.maxDepth > 0;

  router.post("/v1/token", async (req, res, next) => {
    try {
      if (!req.is("application/x-www-form-urlencoded"))
        throw new OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded");
      const form = req.body as Record<string, unknown>;
      const caller = await client(req, form, auth);
      if (!delegation) throw new OAuthError("unsupported_grant_type", "delegation is turned off");
      const answer = await broker.tokenExchange.exchange(caller, form, req.get("dpop"));
      res.set("Pragma", "no-cache").json(answer);
    } catch (error) {
      if (error instanceof OAuthError) sendOAuthError(res, error);
      else next(error);
    }
  });

  router.get("/.well-known/oauth-authorization-server", (_req, res) => {
    res
      .set("Cache-Control", "public, max-age=300")
      .json(authorizationServerMetadata(broker.issuer, { delegation }));
  });

  router.get("/v1/protected-resources/:name", (req, res) => {
    const resource = broker.policy.resource(req.params.name);
    const tokens = broker.adapters.get(req.params.name)?.capabilities.tokenClaims === true;
    const metadata = resource && tokens && protectedResourceMetadata(broker.issuer, resource);
    if (!metadata) throw new NotFoundError("protected resource");
    res.json(metadata);
  });

  return router;
}

/**
 * The client: an agent, by its identity JWT as a Bearer header or as an RFC 7523 client
 * assertion — exactly one of them (RFC 6749 §2.3). Anything else is `invalid_client`.
 */
async function client(
  req: Request,
  form: Record<string, unknown>,
  auth: Authenticator,
): Promise<AgentPrincipal> {
  const assertion = clientAssertionOf(form);
  if (assertion && req.get("authorization") !== undefined)
    throw new OAuthError("invalid_request", "use one client authentication method, not two");
  try {
    const agent = assertion ? await auth.agentAssertion(req, assertion.assertion) : await auth.agent(req);
    if (assertion?.clientId !== undefined && assertion.clientId !== agent.id)
      throw new OAuthError("invalid_client", "client_id is not the agent the assertion names");
    return agent;
  } catch (error) {
    if (error instanceof UnauthenticatedError)
      throw new OAuthError("invalid_client", "the client assertion or bearer token does not verify");
    if (error instanceof ForbiddenError)
      throw new OAuthError("invalid_client", "only agents may exchange tokens");
    throw error;
  }
}

/** `{error, error_description}` (RFC 6749 §5.2), with the request id the jitkey shape also gives. */
function sendOAuthError(res: Response, error: OAuthError): void {
  if (error.status === 401) res.set("WWW-Authenticate", 'Bearer realm="jitkey"');
  res.status(error.status).json({
    error: error.error,
    // RFC 6749 §5.2 allows printable ASCII but for '"' and '\' in a description.
    error_description: error.description.replace(/[^\x20-\x21\x23-\x5B\x5D-\x7E]/g, "?"),
    request_id: res.locals.requestId as string | undefined,
  });
}
