import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, mintLease } from "../helpers/flows.ts";

describe("brokers publish their signing keys: no shared key file", () => {
  let a: TestBroker;
  let b: TestBroker;
  before(async () => {
    // Two brokers over the same state, each with keys of its own.
    a = await startTestBroker({
      name: "keys",
      config: async (raw) => {
        raw.data = { dir: await mkdtemp(join(tmpdir(), "jitkey-keys-a-")) };
      },
    });
    b = await startTestBroker({
      name: "keys",
      prefix: a.prefix,
      issuer: a.issuer,
      config: (raw) => {
        raw.data = { dir: join(tmpdir(), `jitkey-keys-b-${process.pid}-${Date.now()}`) };
        raw.operators = a.config.operators;
        raw.introspectors = a.config.introspectors;
      },
    });
  });
  after(async () => {
    await b.close({ keepKeys: true });
    await a.close();
  });

  it("verifies at one broker a credential another broker signed, and lists every broker's keys", async () => {
    const kidsOf = (t: TestBroker) => t.broker.signingKeys.publicJwks().keys.map((key) => key.kid);
    expect(kidsOf(a)).to.not.deep.equal(kidsOf(b));
    const agent = await agentSession(a, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(a, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const { credential } = await mintLease(a, agent, taskId, { resource: "demo-api" });
    const answer = await b.http
      .post("/v1/introspect")
      .set({ Authorization: `Bearer ${a.introspectorToken}` })
      .type("form")
      .send({ token: credential.token })
      .expect(200);
    expect(answer.body.active).to.equal(true);
    const jwks = await b.http.get("/.well-known/jwks.json").expect(200);
    const served = jwks.body.keys.map((key: { kid: string }) => key.kid);
    expect(served).to.include.members([...kidsOf(a), ...kidsOf(b)]);
  });
});
