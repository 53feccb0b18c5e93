import { expect } from "chai";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

describe("standards metadata: RFC 8414 and RFC 9728", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "oauth-metadata", workers: false });
  });
  after(async () => {
    await t.close();
  });

  it("publishes authorization server metadata naming its endpoints, grant and DPoP algorithms", async () => {
    const res = await t.http.get("/.well-known/oauth-authorization-server").expect(200);
    const issuer = t.broker.issuer;
    expect(res.body).to.deep.include({
      issuer,
      token_endpoint: `${issuer}/v1/token`,
      introspection_endpoint: `${issuer}/v1/introspect`,
      jwks_uri: `${issuer}/.well-known/jwks.json`,
      grant_types_supported: ["urn:ietf:params:oauth:grant-type:token-exchange"],
      token_endpoint_auth_methods_supported: ["private_key_jwt"],
      introspection_endpoint_auth_methods_supported: ["Bearer"],
    });
    expect(res.body.dpop_signing_alg_values_supported).to.include.members(["ES256", "EdDSA", "RS256"]);
    expect(res.body.dpop_signing_alg_values_supported.some((alg: string) => alg.startsWith("HS"))).to.equal(
      false,
    );
    expect(res.headers["cache-control"]).to.equal("public, max-age=300");
  });

  it("composes RFC 9728 metadata for a resource whose credentials are tokens with a URL audience", async () => {
    const res = await t.http.get("/v1/protected-resources/demo-api").expect(200);
    expect(res.body).to.deep.include({
      resource: "https://demo-api.example",
      authorization_servers: [t.broker.issuer],
      scopes_supported: ["read", "write"],
      bearer_methods_supported: ["header"],
      resource_name: "demo-api",
      dpop_bound_access_tokens_required: false,
    });
  });

  it("answers not_found for an unknown resource or one with no token credentials", async () => {
    for (const name of ["nope", "records", "..", "%2e%2e"]) {
      const res = await t.http.get(`/v1/protected-resources/${name}`);
      expect(res.status, name).to.equal(404);
      expect(res.body.error.code, name).to.equal("not_found");
    }
  });
});
