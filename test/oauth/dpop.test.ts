import { expect } from "chai";
import { decodeJwt, exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { type AgentSession, agentSession, auditEvents, createTask, mintLease } from "../helpers/flows.ts";
import { brokerUrl, DpopKey, exchange, exchangeForm, introspect } from "./oauth-helpers.ts";

const DEMO = [{ resource: "demo-api", scopes: ["read", "write"] }];

describe("sender-constrained credentials: DPoP (RFC 9449)", () => {
  let t: TestBroker;
  let a: AgentSession;
  let b: AgentSession;

  before(async () => {
    t = await startTestBroker({ name: "dpop" });
    a = await agentSession(t, "agent-a");
    b = await agentSession(t, "agent-b");
  });
  after(async () => {
    await t.close();
  });

  /** Mints a demo-api credential for a new task of agent A, with `proof` as the DPoP header. */
  function mintWith(taskId: string, proof: string | undefined, resource = "demo-api") {
    const request = t.http.post(`/v1/tasks/${taskId}/leases`).set(a.headers);
    return (proof ? request.set("DPoP", proof) : request).send({ resource });
  }

  async function boundCredential(key: DpopKey): Promise<{ taskId: string; leaseId: string; token: string }> {
    const taskId = await createTask(t, a, { resources: DEMO });
    const res = await mintWith(taskId, await key.proof("POST", brokerUrl(t, `/v1/tasks/${taskId}/leases`)));
    expect(res.status, res.text).to.equal(201);
    return { taskId, leaseId: res.body.lease.id, token: res.body.credential.token };
  }

  it("binds a minted credential to the proof's key: cnf.jkt in the token, DPoP in introspection", async () => {
    const key = await DpopKey.create();
    const taskId = await createTask(t, a, { resources: DEMO });
    const res = await mintWith(taskId, await key.proof("POST", brokerUrl(t, `/v1/tasks/${taskId}/leases`)));
    expect(res.status, res.text).to.equal(201);
    expect(res.body.credential.type).to.equal("dpop");
    expect(res.body.lease.dpopJkt).to.equal(key.jkt);
    expect(decodeJwt(res.body.credential.token).cnf).to.deep.equal({ jkt: key.jkt });
    const seen = await introspect(t, res.body.credential.token);
    expect(seen).to.include({ active: true, token_type: "DPoP" });
    expect(seen.cnf).to.deep.equal({ jkt: key.jkt });

    const bearer = await mintLease(t, a, taskId, { resource: "demo-api" });
    expect(bearer.credential.type).to.equal("bearer");
    expect(decodeJwt(bearer.credential.token as string)).to.not.have.property("cnf");
    const plain = await introspect(t, bearer.credential.token as string);
    expect(plain).to.include({ active: true, token_type: "Bearer" });
    expect(plain).to.not.have.property("cnf");
  });

  it("rejects a replayed proof with invalid_dpop_proof, audited, and mints nothing", async () => {
    const key = await DpopKey.create();
    const taskId = await createTask(t, a, { resources: DEMO });
    const proof = await key.proof("POST", brokerUrl(t, `/v1/tasks/${taskId}/leases`));
    await mintWith(taskId, proof).expect(201);
    const replay = await mintWith(taskId, proof).expect(400);
    expect(replay.body.error.code).to.equal("invalid_dpop_proof");
    const leases = await t.broker.leases.list({ taskId, limit: 10 });
    expect(leases).to.have.length(1);
    const denied = (await auditEvents(t, { agentId: a.agentId })).filter(
      (event) => event.type === "lease_denied" && event.requestedTaskId === taskId,
    );
    expect(denied).to.have.length(1);
  });

  it("rejects proofs for another method or URL, out of the iat window, with HMAC, a private key or the wrong typ", async () => {
    const key = await DpopKey.create();
    const taskId = await createTask(t, a, { resources: DEMO });
    const url = brokerUrl(t, `/v1/tasks/${taskId}/leases`);
    const hmacKey = new TextEncoder().encode("a shared secret that proves nothing");
    const { privateKey } = await generateKeyPair("ES256", { extractable: true });
    const privateJwk = await exportJWK(privateKey);
    const secretJwk: JWK = { kty: "oct", k: "c2VjcmV0" };
    const broken = [
      await key.proof("GET", url),
      await key.proof("POST", brokerUrl(t, "/v1/tasks")),
      await key.proof("POST", url.replace("http://jitkey.test", "http://evil.test")),
      await key.proof("POST", url, { claims: { iat: Math.floor(Date.now() / 1000) - 600 } }),
      await key.proof("POST", url, { claims: { iat: Math.floor(Date.now() / 1000) + 600 } }),
      await key.proof("POST", url, { claims: { jti: undefined } }),
      await key.proof("POST", url, { header: { typ: "JWT" } }),
      await key.proof("POST", url, { accessToken: "a token nobody presented" }),
      await new SignJWT({ htm: "POST", htu: url, iat: Math.floor(Date.now() / 1000), jti: "h" })
        .setProtectedHeader({ alg: "HS256", typ: "dpop+jwt", jwk: secretJwk })
        .sign(hmacKey),
      await new SignJWT({ htm: "POST", htu: url, iat: Math.floor(Date.now() / 1000), jti: "p" })
        .setProtectedHeader({ alg: "ES256", typ: "dpop+jwt", jwk: privateJwk })
        .sign(privateKey),
      `${await key.proof("POST", url)}, ${await key.proof("POST", url)}`,
      "not a proof",
    ];
    for (const [i, proof] of broken.entries()) {
      const res = await mintWith(taskId, proof);
      expect(res.status, `proof ${i}: ${res.text}`).to.equal(400);
      expect(res.body.error.code, `proof ${i}`).to.equal("invalid_dpop_proof");
    }
    expect(await t.broker.leases.list({ taskId, limit: 10 })).to.deep.equal([]);
  });

  it("refuses to bind a credential whose adapter signs nothing (400 invalid_request)", async () => {
    const key = await DpopKey.create();
    const taskId = await createTask(t, a, { resources: [{ resource: "records", scopes: ["read"] }] });
    const res = await mintWith(
      taskId,
      await key.proof("POST", brokerUrl(t, `/v1/tasks/${taskId}/leases`)),
      "records",
    ).expect(400);
    expect(res.body.error.code).to.equal("invalid_request");
  });

  it("exchanges a bound credential only with a proof of its key, binding the child to the sub-agent's key", async () => {
    const parentKey = await DpopKey.create();
    const subKey = await DpopKey.create("EdDSA");
    const root = await boundCredential(parentKey);
    const tokenUrl = brokerUrl(t, "/v1/token");
    const form = exchangeForm(root.token, { dpop_jkt: subKey.jkt }, await t.agentToken("agent-b"));

    const without = await exchange(t, a, form).expect(400);
    expect(without.body.error).to.equal("invalid_dpop_proof");
    const otherKey = await exchange(t, a, form, await subKey.proof("POST", tokenUrl)).expect(400);
    expect(otherKey.body.error).to.equal("invalid_dpop_proof");
    const wrongAth = await exchange(
      t,
      a,
      form,
      await parentKey.proof("POST", tokenUrl, { accessToken: "another token" }),
    ).expect(400);
    expect(wrongAth.body.error).to.equal("invalid_dpop_proof");

    const proof = await parentKey.proof("POST", tokenUrl, { accessToken: root.token });
    const ok = await exchange(t, a, form, proof);
    expect(ok.status, ok.text).to.equal(200);
    expect(ok.body.token_type).to.equal("DPoP");
    expect(decodeJwt(ok.body.access_token).cnf).to.deep.equal({ jkt: subKey.jkt });
    expect((await introspect(t, ok.body.access_token)).cnf).to.deep.equal({ jkt: subKey.jkt });

    const replayed = await exchange(t, a, form, proof).expect(400);
    expect(replayed.body.error).to.equal("invalid_dpop_proof");

    // B holds the child now, bound to its own key: its own exchange proves that key.
    const hop2 = await exchange(
      t,
      b,
      exchangeForm(ok.body.access_token),
      await subKey.proof("POST", tokenUrl),
    );
    expect(hop2.status, hop2.text).to.equal(200);
    expect(decodeJwt(hop2.body.access_token).cnf).to.deep.equal({ jkt: subKey.jkt });
  });

  it("binds the child of an unbound credential to the key of the proof sent with the exchange", async () => {
    const key = await DpopKey.create();
    const taskId = await createTask(t, a, { resources: DEMO });
    const { credential } = await mintLease(t, a, taskId, { resource: "demo-api" });
    const res = await exchange(
      t,
      a,
      exchangeForm(credential.token as string),
      await key.proof("POST", brokerUrl(t, "/v1/token")),
    );
    expect(res.status, res.text).to.equal(200);
    expect(res.body.token_type).to.equal("DPoP");
    expect(decodeJwt(res.body.access_token).cnf).to.deep.equal({ jkt: key.jkt });
  });
});
