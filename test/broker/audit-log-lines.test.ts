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
});
