import type { ResourceConfig } from "../config.ts";
import { AGENT_TOKEN_ALGORITHMS } from "../identity/agent-verifier.ts";
import { DPOP_ALGORITHMS } from "./dpop.ts";
import { audienceOf } from "./token-exchange.ts";
import { TOKEN_EXCHANGE_GRANT } from "./token-request.ts";

/**
 * RFC 8414 authorization server metadata, served at `/.well-known/oauth-authorization-server`.
 * jitkey has no authorization endpoint: its only grant is token exchange, so
 * `response_types_supported` (required by RFC 8414) is empty. Clients authenticate at the token
 * endpoint with their workload identity JWT as an RFC 7523 client assertion (`private_key_jwt`,
 * signed by the workload's issuer) or as a Bearer header; introspection callers use a Bearer
 * token (RFC 8414 §2 allows access token types there).
 */
export function authorizationServerMetadata(
  issuer: string,
  options: { delegation: boolean },
): Record<string, unknown> {
  return {
    issuer,
    token_endpoint: `${issuer}/v1/token`,
    introspection_endpoint: `${issuer}/v1/introspect`,
    jwks_uri: `${issuer}/.well-known/jwks.json`,
    response_types_supported: [],
    grant_types_supported: options.delegation ? [TOKEN_EXCHANGE_GRANT] : [],
    token_endpoint_auth_methods_supported: ["private_key_jwt"],
    token_endpoint_auth_signing_alg_values_supported: AGENT_TOKEN_ALGORITHMS,
    introspection_endpoint_auth_methods_supported: ["Bearer"],
    dpop_signing_alg_values_supported: DPOP_ALGORITHMS,
  };
}

/**
 * The RFC 9728 protected resource metadata of a resource whose credentials are broker-signed
 * tokens with an absolute URL as audience (its resource identifier), or `undefined`. RFC 9728
 * puts this document on the resource server's own host (`<resource origin>/.well-known/
 * oauth-protected-resource<path>`), where a client checks that `resource` is the URL it asked
 * about: jitkey composes it, and the resource server (an MCP server, say) serves it there.
 */
export function protectedResourceMetadata(
  issuer: string,
  resource: ResourceConfig,
): Record<string, unknown> | undefined {
  const identifier = audienceOf(resource);
  if (!identifier || !URL.canParse(identifier) || !/^https?:$/.test(new URL(identifier).protocol))
    return undefined;
  return {
    resource: identifier,
    authorization_servers: [issuer],
    scopes_supported: resource.scopes,
    bearer_methods_supported: ["header"],
    resource_name: resource.name,
    dpop_signing_alg_values_supported: DPOP_ALGORITHMS,
    dpop_bound_access_tokens_required: false,
  };
}
