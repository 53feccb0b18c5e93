import { expect } from "chai";
import type { Test } from "supertest";
import { sha256Hex } from "../../broker/operators/principal-tokens.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

const PRINCIPALS = ["none", "agentA", "agentB", "introspector", "operator"] as const;
type PrincipalName = (typeof PRINCIPALS)[number];

/** What a cell needs to exist before its request: fresh for every cell, owned by agent A. */
type Fixture = "none" | "pendingTask" | "approvedTask" | "lease" | "demoToken" | "otherToken";

interface Row {
  method: "get" | "post" | "delete";
  /** `:task`, `:lease` are replaced by the fixture's ids. */
  path: string;
  fixture: Fixture;
  body?: (ids: FixtureIds) => Record<string, unknown>;
  /** Expected status per principal, in the order of {@link PRINCIPALS}. */
  expect: [number, number, number, number, number];
  /** Introspection: the `active` each principal that gets a 200 should see. */
  active?: Partial<Record<PrincipalName, boolean>>;
  /** Send the body form-encoded (the token endpoint takes nothing else). */
  form?: boolean;
}

interface FixtureIds {
  task?: string;
  lease?: string;
  token?: string;
}

const demoTask = { goal: "read the demo api", resources: [{ resource: "demo-api", scopes: ["read"] }] };

/**
 * The one table: every route × {no token, agent A, agent B, an introspector limited to
 * `demo-api`, an operator} → the status each gets. Agent A owns every task and lease.
 */
const MATRIX: Row[] = [
  //                                                                none  A    B    intr op
  {
    method: "post",
    path: "/v1/tasks",
    fixture: "none",
    body: () => demoTask,
    expect: [401, 201, 201, 403, 403],
  },
  { method: "get", path: "/v1/tasks", fixture: "none", expect: [401, 403, 403, 403, 200] },
  { method: "get", path: "/v1/tasks/:task", fixture: "pendingTask", expect: [401, 200, 403, 403, 200] },
  {
    method: "post",
    path: "/v1/tasks/:task/approve",
    fixture: "pendingTask",
    body: () => ({}),
    expect: [401, 403, 403, 403, 200],
  },
  {
    method: "post",
    path: "/v1/tasks/:task/deny",
    fixture: "pendingTask",
    body: () => ({}),
    expect: [401, 403, 403, 403, 200],
  },
  {
    method: "post",
    path: "/v1/tasks/:task/complete",
    fixture: "approvedTask",
    expect: [401, 200, 403, 403, 200],
  },
  {
    method: "post",
    path: "/v1/tasks/:task/leases",
    fixture: "approvedTask",
    body: () => ({ resource: "demo-api" }),
    expect: [401, 201, 403, 403, 403],
  },
  // A tool server (introspector) may record calls about a lease of a resource it may introspect.
  {
    method: "post",
    path: "/v1/tasks/:task/events",
    fixture: "lease",
    body: (ids) => ({ type: "tool_call", tool: "github", action: "read", leaseId: ids.lease }),
    expect: [401, 201, 403, 201, 403],
  },
  {
    method: "get",
    path: "/v1/tasks/:task/timeline",
    fixture: "approvedTask",
    expect: [401, 200, 403, 403, 200],
  },
  { method: "get", path: "/v1/leases", fixture: "none", expect: [401, 403, 403, 403, 200] },
  { method: "get", path: "/v1/leases/:lease", fixture: "lease", expect: [401, 200, 403, 403, 200] },
  { method: "delete", path: "/v1/leases/:lease", fixture: "lease", expect: [401, 202, 403, 403, 202] },
  // The owner may ask; a broker-signed token's expiry is in the token, so the answer is 409.
  {
    method: "post",
    path: "/v1/leases/:lease/renew",
    fixture: "lease",
    body: () => ({}),
    expect: [401, 409, 403, 403, 403],
  },
  {
    method: "post",
    path: "/v1/revocations",
    fixture: "lease",
    body: (ids) => ({ leaseId: ids.lease, reason: "matrix" }),
    expect: [401, 403, 403, 403, 202],
  },
  {
    method: "post",
    path: "/v1/introspect",
    fixture: "demoToken",
    body: (ids) => ({ token: ids.token }),
    expect: [401, 401, 401, 200, 200],
    active: { introspector: true, operator: true },
  },
  {
    method: "post",
    path: "/v1/introspect",
    fixture: "otherToken",
    body: (ids) => ({ token: ids.token }),
    expect: [401, 401, 401, 200, 200],
    // The introspector is limited to demo-api: of other-api's credentials it learns nothing.
    active: { introspector: false, operator: true },
  },
  // Token exchange: only the agent holding the credential; B is refused the grant, others are no client.
  {
    method: "post",
    path: "/v1/token",
    fixture: "demoToken",
    form: true,
    body: (ids) => ({
      grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
      subject_token: ids.token,
      subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
    }),
    expect: [401, 200, 400, 401, 401],
  },
  {
    method: "get",
    path: "/.well-known/oauth-authorization-server",
    fixture: "none",
    expect: [200, 200, 200, 200, 200],
  },
  {
    method: "get",
    path: "/v1/protected-resources/demo-api",
    fixture: "none",
    expect: [200, 200, 200, 200, 200],
  },
  { method: "get", path: "/v1/audit", fixture: "none", expect: [401, 403, 403, 403, 200] },
  { method: "get", path: "/v1/audit/verify", fixture: "none", expect: [401, 403, 403, 403, 200] },
  { method: "get", path: "/v1/audit/export", fixture: "none", expect: [401, 403, 403, 403, 200] },
  // The operator's 200 is a stream that never ends: the contract test covers it.
  { method: "get", path: "/v1/events?types=nope", fixture: "none", expect: [401, 403, 403, 403, 400] },
  { method: "get", path: "/.well-known/jwks.json", fixture: "none", expect: [200, 200, 200, 200, 200] },
  { method: "get", path: "/healthz", fixture: "none", expect: [200, 200, 200, 200, 200] },
  { method: "get", path: "/readyz", fixture: "none", expect: [200, 200, 200, 200, 200] },
  { method: "get", path: "/metrics", fixture: "none", expect: [200, 200, 200, 200, 200] },
  { method: "get", path: "/openapi.json", fixture: "none", expect: [200, 200, 200, 200, 200] },
];

describe("authorization matrix: every route × every kind of caller", () => {
  let t: TestBroker;
  const tokens = {} as Record<PrincipalName, string | undefined>;
  const introspectorToken = `rs-matrix-${Date.now()}`;

  before(async () => {
    t = await startTestBroker({
      name: "authz",
      config: (raw) => {
        const resources = raw.resources as Record<string, unknown>[];
        resources.push({
          name: "other-api",
          adapter: "jwt",
          classification: "internal",
          scopes: ["read"],
          maxTtlSeconds: 300,
          options: { audience: "https://other-api.example" },
        });
        (raw.policies as Record<string, unknown>[]).push({
          name: "matrix-other",
          agents: ["ci:agent-*"],
          resources: ["other-api"],
          scopes: ["read"],
          maxClassification: "internal",
          autoApprove: true,
          maxTtlSeconds: 300,
        });
        raw.introspectors = [
          { name: "reports-api", tokenSha256: sha256Hex(introspectorToken), resources: ["demo-api"] },
        ];
      },
    });
    tokens.none = undefined;
    tokens.agentA = await t.agentToken("agent-a");
    tokens.agentB = await t.agentToken("agent-b");
    tokens.introspector = introspectorToken;
    tokens.operator = t.operatorToken;
  });
  after(async () => {
    await t.close();
  });

  const as = (name: PrincipalName) => ({ Authorization: `Bearer ${tokens[name]}` });

  async function prepare(fixture: Fixture): Promise<FixtureIds> {
    if (fixture === "none") return {};
    const resource = fixture === "otherToken" ? "other-api" : "demo-api";
    const created = await t.http
      .post("/v1/tasks")
      .set(as("agentA"))
      .send({ goal: "matrix", resources: [{ resource, scopes: ["read"] }] })
      .expect(201);
    const task = created.body.task.id as string;
    if (fixture === "pendingTask") return { task };
    if (created.body.task.status === "pending") {
      await t.http.post(`/v1/tasks/${task}/approve`).set(as("operator")).send({}).expect(200);
    }
    if (fixture === "approvedTask") return { task };
    const minted = await t.http
      .post(`/v1/tasks/${task}/leases`)
      .set(as("agentA"))
      .send({ resource })
      .expect(201);
    return { task, lease: minted.body.lease.id, token: minted.body.credential.token };
  }

  for (const row of MATRIX) {
    const route = `${row.method.toUpperCase()} ${row.path}${row.fixture.endsWith("Token") ? ` (${row.fixture})` : ""}`;
    it(`${route} answers ${PRINCIPALS.map((p, i) => `${p} ${row.expect[i]}`).join(", ")}`, async () => {
      const got: Record<string, number> = {};
      for (const principal of PRINCIPALS) {
        const ids = await prepare(row.fixture);
        const path = row.path.replace(":task", ids.task ?? "").replace(":lease", ids.lease ?? "");
        let request: Test = t.http[row.method](path);
        if (principal !== "none") request = request.set(as(principal));
        if (row.form) request = request.type("form");
        const res = await (row.body ? request.send(row.body(ids)) : request);
        got[principal] = res.status;
        // The token endpoint's errors are OAuth-shaped: `{error: "<code>"}`.
        const code = typeof res.body.error === "string" ? res.body.error : res.body.error?.code;
        if (res.status >= 400) expect(code, `${principal}: ${res.text}`).to.be.a("string");
        const active = row.active?.[principal];
        if (active !== undefined) expect(res.body.active, `${principal} sees active`).to.equal(active);
      }
      expect(got).to.deep.equal(Object.fromEntries(PRINCIPALS.map((p, i) => [p, row.expect[i]])));
    });
  }
});
