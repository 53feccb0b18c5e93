import { expect } from "chai";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

describe("audit events as log lines", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "audit-lines", workers: false });
  });
  after(() => t.close());

  it("logs each event once it is stored, as stored, its public id first", async () => {
    const event = await t.broker.audit.record({
      type: "introspected",
      actor: "operator:alice",
      leaseId: "lse_x",
      reason: 'a "quoted" é reason',
      apiToken: "never logged",
    });
    const lines = t.logs.lines
      .map((line) => JSON.parse(line) as { message?: string; audit?: Record<string, unknown> })
      .filter((line) => line.message === "audit" && line.audit?.id === event.id);
    expect(lines).to.have.length(1);
    const { audit } = lines[0] ?? {};
    expect(Object.keys(audit ?? {})[0]).to.equal("id");
    expect(audit).to.deep.equal(event);
    expect(audit).to.include({ apiToken: "[redacted]", reason: 'a "quoted" é reason' });
  });

  it("stores every string and array capped and secret-looking values redacted, however deep", async () => {
    const jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
    const event = await t.broker.audit.record({
      type: "introspected",
      actor: "operator:alice",
      reason: "x".repeat(3000),
      scopes: Array.from({ length: 100 }, (_, i) => `s${i}`),
      note: `sent ${jwt} and Bearer abc.def`,
      nested: { client_secret: "hidden", list: [{ a: { b: { c: { d: "deep" } } } }], skipped: undefined },
    } as never);
    const [stored] = await t.broker.audit
      .query({ limit: 1000 })
      .then((all) => all.filter((e) => e.id === event.id));
    const body = stored as unknown as Record<string, unknown>;
    expect(body.reason).to.equal(`${"x".repeat(2048)}…[cut]`);
    expect(body.scopes).to.have.length(64);
    expect(body.note).to.equal("sent [redacted] and [redacted]");
    expect(body.nested).to.deep.equal({
      client_secret: "[redacted]",
      list: [{ a: { b: "[too deep]" } }],
    });
  });
});
