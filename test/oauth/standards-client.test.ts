import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect } from "chai";
import * as oauth from "oauth4webapi";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { type AgentSession, agentSession, createTask } from "../helpers/flows.ts";
import { DpopKey } from "./oauth-helpers.ts";

/**
 * The broker as a strict, independent OAuth library sees it: panva's oauth4webapi discovers the
 * RFC 8414 metadata, performs the RFC 8693 exchange with DPoP, introspects (RFC 7662), reads
 * the RFC 9728 resource metadata, and — as a resource server would — validates the delegated
 * RFC 9068 access token and its DPoP proof. Every answer goes through the library's own checks.
 */
describe("standards client: oauth4webapi against the broker", () => {
  let t: TestBroker;
  let server: Server;
  let agent: AgentSession;
  /** Requests to the broker's public URL go to the test server; the resource server's are captured. */
  let fetchOptions: { [oauth.customFetch]: typeof fetch; [oauth.allowInsecureRequests]: true };
  let as: oauth.AuthorizationServer;
  const audience = "https://demo-api.example";
  let captured: Request | undefined;
  let client: oauth.Client;

  before(async () => {
    t = await startTestBroker({ name: "standards-client" });
    server = createServer(t.app).listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    const local = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const routed: typeof fetch = async (input, init) => {
      const url = String(input instanceof Request ? input.url : input);
      if (url.startsWith(audience)) {
        captured = new Request(url, init);
        return new Response("ok");
      }
      return fetch(url.replace(t.broker.issuer, local), init);
    };
    fetchOptions = { [oauth.customFetch]: routed, [oauth.allowInsecureRequests]: true };
    agent = await agentSession(t, "agent-a");
    client = { client_id: agent.agentId };
    const issuer = new URL(t.broker.issuer);
    as = await oauth.processDiscoveryResponse(
      issuer,
      await oauth.discoveryRequest(issuer, { algorithm: "oauth2", ...fetchOptions }),
    );
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await t.close();
  });

  /** RFC 7523: the agent's identity JWT as its client assertion. */
  function identityAssertion(token: string): oauth.ClientAuth {
    return (_as, client, body) => {
      body.set("client_id", client.client_id);
      body.set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
      body.set("client_assertion", token);
    };
  }

  /** Introspection callers authenticate with their Bearer token (RFC 8414 §2 lists it in the metadata). */
  const introspector: oauth.ClientAuth = (_as, _client, _body, headers) => {
    headers.set("authorization", `Bearer ${t.introspectorToken}`);
  };

  /** Agent A's token exchange, authenticated by its identity JWT as the client assertion. */
  async function tokenExchange(
    parameters: Record<string, string>,
    dpop?: oauth.DPoPHandle,
  ): Promise<Response> {
    return oauth.genericTokenEndpointRequest(
      as,
      client,
      identityAssertion(await t.agentToken("agent-a")),
      "urn:ietf:params:oauth:grant-type:token-exchange",
      parameters,
      { ...(dpop ? { DPoP: dpop } : {}), ...fetchOptions },
    );
  }

  async function dpopHandle(): Promise<oauth.DPoPHandle> {
    const keys = await oauth.generateKeyPair("ES256", { extractable: true });
    return oauth.DPoP({}, keys);
  }

  it("discovers, exchanges with DPoP, introspects and validates the delegated token as a resource server", async () => {
    expect(as.grant_types_supported).to.include("urn:ietf:params:oauth:grant-type:token-exchange");
    expect(as.dpop_signing_alg_values_supported).to.include("ES256");

    // The parent: minted with a DPoP proof of the agent's key.
    const taskId = await createTask(t, agent, {
      resources: [{ resource: "demo-api", scopes: ["read", "write"] }],
    });
    const parentKey = await DpopKey.create();
    const minted = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .set("DPoP", await parentKey.proof("POST", `${t.broker.issuer}/v1/tasks/${taskId}/leases`))
      .send({ resource: "demo-api" })
      .expect(201);
    const parentToken = minted.body.credential.token as string;

    // The exchange proves the parent's key: the library signs the proof with the handle we give it.
    const parentHandle = oauth.DPoP({}, parentKey.keyPair);
    const subHandle = await dpopHandle();
    const response = await tokenExchange(
      {
        subject_token: parentToken,
        subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
        actor_token: await t.agentToken("agent-tool"),
        actor_token_type: "urn:ietf:params:oauth:token-type:jwt",
        scope: "read",
        resource: audience,
        dpop_jkt: await subHandle.calculateThumbprint(),
      },
      parentHandle,
    );
    const tokens = await oauth.processGenericTokenEndpointResponse(as, client, response);
    expect(tokens.token_type).to.equal("dpop");
    expect(tokens.scope).to.equal("read");
    expect(tokens.issued_token_type).to.equal("urn:ietf:params:oauth:token-type:jwt");

    const introspection = await oauth.processIntrospectionResponse(
      as,
      { client_id: "reports-api" },
      await oauth.introspectionRequest(
        as,
        { client_id: "reports-api" },
        introspector,
        tokens.access_token,
        fetchOptions,
      ),
    );
    expect(introspection).to.include({ active: true, sub: agent.agentId, scope: "read", token_type: "DPoP" });
    expect(introspection.cnf).to.deep.equal({ jkt: await subHandle.calculateThumbprint() });
    expect(introspection.act).to.deep.equal({ sub: "ci:agent-tool" });

    // The sub-agent calls the resource server; the resource server validates token and proof.
    await oauth.protectedResourceRequest(
      tokens.access_token,
      "GET",
      new URL(`${audience}/reports`),
      undefined,
      undefined,
      {
        DPoP: subHandle,
        ...fetchOptions,
      },
    );
    expect(captured).to.be.instanceOf(Request);
    const claims = await oauth.validateJwtAccessToken(as, captured as Request, audience, {
      requireDPoP: true,
      ...fetchOptions,
    });
    expect(claims).to.include({ sub: agent.agentId, client_id: agent.agentId });
    expect(claims.act).to.deep.equal({ sub: "ci:agent-tool" });

    // RFC 9728: the document the resource server would serve as its own.
    const resourceMetadata = await oauth.processResourceDiscoveryResponse(
      new URL(audience),
      await fetch(
        new URL(
          `/v1/protected-resources/demo-api`,
          `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        ),
      ),
    );
    expect(resourceMetadata.authorization_servers).to.deep.equal([as.issuer]);
  });

  it("reads the broker's token endpoint errors as RFC 6749 error responses", async () => {
    const response = await tokenExchange({
      subject_token: "not.a.credential",
      subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
    });
    const failure = await oauth.processGenericTokenEndpointResponse(as, client, response).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).to.be.instanceOf(oauth.ResponseBodyError);
    expect((failure as oauth.ResponseBodyError).error).to.equal("invalid_request");
    expect((failure as oauth.ResponseBodyError).status).to.equal(400);
  });
});
