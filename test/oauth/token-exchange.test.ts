import { createHash } from "node:crypto";
import { expect } from "chai";
import { decodeJwt } from "jose";
import { createJwtAdapter } from "../../adapters/jwt/jwt-adapter.ts";
import type { CredentialAdapter, IssueRequest } from "../../adapters/types.ts";
import { LeaseStates } from "../../broker/leases/lease-states.ts";
import { sha256Hex } from "../../broker/operators/principal-tokens.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import {
  type AgentSession,
  agentSession,
  auditEvents,
  createTask,
  eventOf,
  leaseReaches,
  mintLease,
  operatorHeaders,
} from "../helpers/flows.ts";
import { exchange, exchangeForm, introspect } from "./oauth-helpers.ts";

const DEMO = [{ resource: "demo-api", scopes: ["read", "write"] }];

/** Lets a test act between the token exchange's write and the adapter signing the token. */
interface IssueGate {
  inner?: CredentialAdapter;
  beforeIssue?: (request: IssueRequest) => Promise<void>;
}

/** The demo-api jwt adapter, behind a gate the test can hold the issue at. */
function gatedJwtAdapter(gate: IssueGate): CredentialAdapter {
  return {
    kind: "jwt",
    capabilities: { revocation: "introspection", renewable: false, tokenClaims: true },
    async issue(request) {
      await gate.beforeIssue?.(request);
      if (!gate.inner) throw new Error("gate has no adapter yet");
      return gate.inner.issue(request);
    },
    async revoke() {},
    async health() {
      return { ok: true };
    },
  };
}

describe("delegation: RFC 8693 token exchange at POST /v1/token", () => {
  let t: TestBroker;
  let a: AgentSession;
  let b: AgentSession;
  let c: AgentSession;
  let d: AgentSession;
  const gate: IssueGate = {};

  before(async () => {
    t = await startTestBroker({
      name: "token-exchange",
      adapters: new Map([["demo-api", gatedJwtAdapter(gate)]]),
    });
    gate.inner = createJwtAdapter(
      { audience: "https://demo-api.example" },
      {
        ...testAdapterContext({ resource: "demo-api" }),
        issuer: t.broker.issuer,
        signingKeys: t.broker.signingKeys,
      },
    );
    a = await agentSession(t, "agent-a");
    b = await agentSession(t, "agent-b");
    c = await agentSession(t, "agent-c");
    d = await agentSession(t, "agent-d");
  });
  after(async () => {
    await t.close();
  });
  afterEach(() => {
    gate.beforeIssue = undefined;
  });

  /** An approved demo-api task of agent A and its root credential. */
  async function rootCredential(): Promise<{ taskId: string; leaseId: string; token: string }> {
    const taskId = await createTask(t, a, { resources: DEMO });
    const { lease, credential } = await mintLease(t, a, taskId, { resource: "demo-api" });
    return { taskId, leaseId: lease.id, token: credential.token as string };
  }

  /** `from` exchanges `subject` for `to`; expects 200 and returns the answer. */
  async function delegate(
    from: AgentSession,
    subject: string,
    to: AgentSession,
    extra: Record<string, string> = {},
  ): Promise<Record<string, unknown>> {
    const token = await t.agentToken(to.agentId.slice("ci:".length));
    const res = await exchange(t, from, exchangeForm(subject, extra, token));
    expect(res.status, res.text).to.equal(200);
    return res.body;
  }

  it("gives the holder a narrower credential for the sub-agent its actor_token names", async () => {
    const root = await rootCredential();
    const answer = await delegate(a, root.token, b, { scope: "read", requested_ttl: "60" });
    expect(answer).to.include({
      issued_token_type: "urn:ietf:params:oauth:token-type:jwt",
      token_type: "Bearer",
      scope: "read",
    });
    expect(answer.expires_in).to.be.within(59, 60);
    const child = decodeJwt(answer.access_token as string);
    const parent = decodeJwt(root.token);
    expect(child).to.include({ sub: a.agentId, client_id: a.agentId, task_id: root.taskId, scope: "read" });
    expect(child.act).to.deep.equal({ sub: b.agentId });
    expect(child.aud).to.equal(parent.aud);
    expect(child.jti).to.not.equal(parent.jti);
    expect(child.exp).to.be.at.most(parent.exp as number);

    const seen = await introspect(t, answer.access_token as string);
    expect(seen).to.include({ active: true, scope: "read", client_id: a.agentId, sub: a.agentId });
    expect(seen.act).to.deep.equal({ sub: b.agentId });
    const lease = await t.broker.leaseStore.get(child.jti as string);
    expect(lease).to.include({ parentLeaseId: root.leaseId, delegationDepth: 1, status: "active" });
    const delegated = eventOf(await auditEvents(t, { leaseId: child.jti as string }), "lease_delegated");
    expect(delegated).to.include({ decision: "allow", parentLeaseId: root.leaseId, delegatedTo: b.agentId });
  });

  it("chains three hops with act nesting every hop, and revoking the root ends every descendant at once", async () => {
    const root = await rootCredential();
    const hop1 = await delegate(a, root.token, b);
    const hop2 = await delegate(b, hop1.access_token as string, c, { scope: "read" });
    const hop3 = await delegate(c, hop2.access_token as string, d);
    expect(decodeJwt(hop3.access_token as string).act).to.deep.equal({
      sub: d.agentId,
      act: { sub: c.agentId, act: { sub: b.agentId } },
    });
    expect(hop3.scope).to.equal("read");
    const tokens = [hop1, hop2, hop3].map((hop) => hop.access_token as string);
    for (const token of tokens) expect((await introspect(t, token)).active).to.equal(true);

    await t.http.delete(`/v1/leases/${root.leaseId}`).set(a.headers).expect(202);
    // The answer to the release is out: every descendant is already inactive.
    for (const token of tokens) expect(await introspect(t, token)).to.deep.equal({ active: false });
    for (const token of tokens) {
      const revoked = await leaseReaches(t, decodeJwt(token).jti as string, "revoked");
      expect(revoked.revokeReason).to.equal("parent_revoked");
    }
  });

  it("answers inactive for a credential whose ancestor left active, before the revocation walk reaches it", async () => {
    const root = await rootCredential();
    const hop1 = await delegate(a, root.token, b);
    const hop2 = await delegate(b, hop1.access_token as string, c);
    // Only the first half of a revocation: the parent moves to revoking, its children are untouched.
    const parent = await t.broker.leaseStore.get(decodeJwt(hop1.access_token as string).jti as string);
    if (!parent) throw new Error("the delegated lease was not stored");
    const states = new LeaseStates(t.broker.keys, { staleMs: 30_000, retentionSeconds: 60 });
    const moved = await t.broker.audit.apply(
      states.startRevocation(
        parent,
        { reason: "operator", requestedAt: new Date().toISOString(), requestedBy: "test" },
        Date.now() + 60_000,
      ),
    );
    expect(moved.ok).to.equal(true);
    const grandchild = await t.broker.leaseStore.get(decodeJwt(hop2.access_token as string).jti as string);
    expect(grandchild?.status).to.equal("active");
    expect(await introspect(t, hop2.access_token as string)).to.deep.equal({ active: false });
    expect((await introspect(t, root.token)).active).to.equal(true);
  });

  it("refuses a hop past delegation.maxDepth (3) with invalid_grant", async () => {
    const root = await rootCredential();
    const hop1 = await delegate(a, root.token, b);
    const hop2 = await delegate(b, hop1.access_token as string, c);
    const hop3 = await delegate(c, hop2.access_token as string, d);
    const res = await exchange(t, d, exchangeForm(hop3.access_token as string)).expect(400);
    expect(res.body.error).to.equal("invalid_grant");
    const denied = (await auditEvents(t, { taskId: root.taskId })).filter(
      (event) => event.type === "delegation_denied",
    );
    expect(denied.map((event) => event.error)).to.deep.equal(["invalid_grant"]);
  });

  it("never widens: more scope is invalid_scope, another resource invalid_target, the end no later than the parent's", async () => {
    const taskId = await createTask(t, a, { resources: DEMO });
    const { credential } = await mintLease(t, a, taskId, {
      resource: "demo-api",
      scopes: ["read"],
      ttlSeconds: 30,
    });
    const token = credential.token as string;
    const wider = await exchange(t, a, exchangeForm(token, { scope: "read write" })).expect(400);
    expect(wider.body.error).to.equal("invalid_scope");
    const elsewhere = await exchange(t, a, exchangeForm(token, { resource: "https://other.example" })).expect(
      400,
    );
    expect(elsewhere.body.error).to.equal("invalid_target");
    const named = await exchange(t, a, exchangeForm(token, { audience: "records" })).expect(400);
    expect(named.body.error).to.equal("invalid_target");
    const overPolicy = await exchange(t, a, exchangeForm(token, { requested_ttl: "100000" })).expect(400);
    expect(overPolicy.body.error).to.equal("invalid_request");

    const same = await exchange(
      t,
      a,
      exchangeForm(token, {
        resource: "https://demo-api.example",
        audience: "demo-api",
        requested_ttl: "600",
      }),
    ).expect(200);
    expect(decodeJwt(same.body.access_token).exp).to.be.at.most(decodeJwt(token).exp as number);
    expect(same.body.expires_in).to.be.at.most(30);
  });

  it("refuses a subject token the caller does not hold, or that is no longer live, with invalid_grant", async () => {
    const root = await rootCredential();
    const notHolder = await exchange(t, b, exchangeForm(root.token)).expect(400);
    expect(notHolder.body.error).to.equal("invalid_grant");
    const hop1 = await delegate(a, root.token, b);
    // Once delegated, the credential is B's: A may not exchange it.
    const original = await exchange(t, a, exchangeForm(hop1.access_token as string)).expect(400);
    expect(original.body.error).to.equal("invalid_grant");

    await t.http.delete(`/v1/leases/${root.leaseId}`).set(a.headers).expect(202);
    const revoked = await exchange(t, a, exchangeForm(root.token)).expect(400);
    expect(revoked.body.error).to.equal("invalid_grant");
    const completedTask = await rootCredential();
    await t.http.post(`/v1/tasks/${completedTask.taskId}/complete`).set(a.headers).expect(200);
    const closed = await exchange(t, a, exchangeForm(completedTask.token)).expect(400);
    expect(closed.body.error).to.equal("invalid_grant");
  });

  it("yields no child when the parent is revoked while the token is being signed", async () => {
    const root = await rootCredential();
    let childId: string | undefined;
    gate.beforeIssue = async (request) => {
      if (!request.claims?.act) return;
      childId = request.leaseId;
      await t.http.delete(`/v1/leases/${root.leaseId}`).set(a.headers).expect(202);
    };
    const res = await exchange(t, a, exchangeForm(root.token)).expect(400);
    expect(res.body.error).to.equal("invalid_grant");
    expect(res.body).to.not.have.property("access_token");
    expect(childId).to.be.a("string");
    const child = await leaseReaches(t, childId as string, "revoked");
    expect(child.revokeReason).to.equal("parent_revoked");
    const events = await auditEvents(t, { leaseId: childId as string });
    expect(events.map((event) => event.type)).to.not.include("lease_delegated");
  });

  it("puts the task's purpose in every jwt credential, never the goal text", async () => {
    const root = await rootCredential();
    const goal = "Reconcile the ledger";
    const expected = {
      goal_sha256: createHash("sha256").update(goal).digest("hex"),
      classification: "internal",
    };
    const claims = decodeJwt(root.token);
    expect(claims.purpose).to.deep.equal(expected);
    expect(JSON.stringify(claims)).to.not.include(goal);
    expect((await introspect(t, root.token)).purpose).to.deep.equal(expected);
    const hop1 = await delegate(a, root.token, b);
    expect(decodeJwt(hop1.access_token as string).purpose).to.deep.equal(expected);
  });

  describe("errors in the OAuth shape (RFC 6749 §5.2)", () => {
    it("answers invalid_request for a malformed request or a subject token the broker did not issue", async () => {
      const root = await rootCredential();
      const cases: [Record<string, string | string[]>, string][] = [
        [
          { subject_token: root.token, subject_token_type: "urn:ietf:params:oauth:token-type:jwt" },
          "invalid_request",
        ],
        [exchangeForm(root.token, { grant_type: "client_credentials" }), "unsupported_grant_type"],
        [exchangeForm(root.token, { subject_token_type: "urn:x" }), "invalid_request"],
        [exchangeForm("not.a.token"), "invalid_request"],
        [exchangeForm(await t.agentToken("agent-a")), "invalid_request"],
        [exchangeForm(root.token, { scope: ["read", "write"] }), "invalid_request"],
        [exchangeForm(root.token, { scope: "" }), "invalid_scope"],
        [
          exchangeForm(root.token, {
            actor_token: "x.y.z",
            actor_token_type: "urn:ietf:params:oauth:token-type:jwt",
          }),
          "invalid_request",
        ],
        [
          exchangeForm(root.token, { actor_token_type: "urn:ietf:params:oauth:token-type:jwt" }),
          "invalid_request",
        ],
        [exchangeForm(root.token, { requested_ttl: "-5" }), "invalid_request"],
        [exchangeForm(root.token, { resource: "not a uri" }), "invalid_target"],
        [exchangeForm(root.token, { dpop_jkt: "short" }), "invalid_request"],
      ];
      for (const [form, code] of cases) {
        const res = await exchange(t, a, form);
        expect(res.status, JSON.stringify(form)).to.equal(400);
        expect(res.body.error, JSON.stringify(form)).to.equal(code);
        expect(res.body.error_description).to.be.a("string");
        expect(res.headers["cache-control"]).to.equal("no-store");
      }
      const json = await t.http.post("/v1/token").set(a.headers).send(exchangeForm(root.token)).expect(400);
      expect(json.body.error).to.equal("invalid_request");
    });

    it("answers invalid_client (401) to a caller that is no agent or does not authenticate", async () => {
      const root = await rootCredential();
      const none = await exchange(t, undefined, exchangeForm(root.token)).expect(401);
      expect(none.body.error).to.equal("invalid_client");
      expect(none.headers["www-authenticate"]).to.match(/^Bearer/);
      const operator = await t.http
        .post("/v1/token")
        .set(operatorHeaders(t))
        .type("form")
        .send(exchangeForm(root.token))
        .expect(401);
      expect(operator.body.error).to.equal("invalid_client");
      const badAssertion = await exchange(
        t,
        undefined,
        exchangeForm(root.token, {
          client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
          client_assertion: "a.b.c",
        }),
      ).expect(401);
      expect(badAssertion.body.error).to.equal("invalid_client");
      const wrongType = await exchange(
        t,
        undefined,
        exchangeForm(root.token, { client_assertion_type: "urn:x", client_assertion: "a.b.c" }),
      ).expect(401);
      expect(wrongType.body.error).to.equal("invalid_client");
    });

    it("takes the caller's identity JWT as an RFC 7523 client assertion, and only one way to authenticate", async () => {
      const root = await rootCredential();
      const assertion = {
        client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        client_assertion: await t.agentToken("agent-a"),
      };
      const ok = await exchange(
        t,
        undefined,
        exchangeForm(root.token, { ...assertion, client_id: a.agentId }),
      );
      expect(ok.status, ok.text).to.equal(200);
      expect(decodeJwt(ok.body.access_token).act).to.deep.equal({ sub: a.agentId });
      const otherId = await exchange(
        t,
        undefined,
        exchangeForm(root.token, { ...assertion, client_id: b.agentId }),
      );
      expect(otherId.status).to.equal(401);
      expect(otherId.body.error).to.equal("invalid_client");
      const both = await exchange(t, a, exchangeForm(root.token, assertion)).expect(400);
      expect(both.body.error).to.equal("invalid_request");
    });
  });
});

describe("delegation turned off (delegation.maxDepth: 0)", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({
      name: "token-exchange-off",
      workers: false,
      config: (raw) => {
        raw.delegation = { maxDepth: 0 };
        raw.introspectors = [{ name: "rs", tokenSha256: sha256Hex("unused") }];
      },
    });
  });
  after(async () => {
    await t.close();
  });

  it("answers unsupported_grant_type and lists no grant type in the metadata", async () => {
    const a = await agentSession(t, "agent-a");
    const taskId = await createTask(t, a, { resources: DEMO });
    const { credential } = await mintLease(t, a, taskId, { resource: "demo-api" });
    const res = await exchange(t, a, exchangeForm(credential.token as string)).expect(400);
    expect(res.body.error).to.equal("unsupported_grant_type");
    const metadata = await t.http.get("/.well-known/oauth-authorization-server").expect(200);
    expect(metadata.body.grant_types_supported).to.deep.equal([]);
  });
});
