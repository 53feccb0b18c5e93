import { expect } from "chai";
import { Introspection } from "../../broker/leases/introspection.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, mintLease } from "../helpers/flows.ts";

/** Introspection answers from memory, and forgets the moment another process changes the record. */
describe("introspection held in memory, dropped on any change", () => {
  let a: TestBroker;
  let b: TestBroker;
  before(async () => {
    a = await startTestBroker({ name: "introspect-cache" });
    b = await startTestBroker({
      name: "introspect-cache",
      prefix: a.prefix,
      issuer: a.issuer,
      workers: false,
      config: (raw) => {
        raw.operators = a.config.operators;
        raw.introspectors = a.config.introspectors;
      },
    });
  });
  after(async () => {
    await b.close({ keepKeys: true });
    await a.close();
  });

  const introspect = (t: TestBroker, token: string) =>
    t.http
      .post("/v1/introspect")
      .set({ Authorization: `Bearer ${a.introspectorToken}` })
      .type("form")
      .send({ token })
      .expect(200)
      .then((res) => res.body.active as boolean);

  /** How long after `change` broker A first answers inactive (it held the credential as active). */
  async function inactiveAfter(token: string, change: () => Promise<unknown>): Promise<number> {
    expect(await introspect(a, token)).to.equal(true);
    expect(await introspect(a, token)).to.equal(true);
    await change();
    const changed = performance.now();
    while (performance.now() - changed < 2000) {
      if (!(await introspect(a, token))) return performance.now() - changed;
    }
    throw new Error("still active 2 s after the change");
  }

  it("answers inactive as soon as another broker process releases the lease, well before its memory would lapse", async () => {
    const agent = await agentSession(a, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(a, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const { lease, credential } = await mintLease(a, agent, taskId, { resource: "demo-api" });
    const ms = await inactiveAfter(credential.token as string, () =>
      b.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202),
    );
    expect(ms).to.be.lessThan(500);
  });

  it("answers inactive as soon as another broker process completes the task", async () => {
    const agent = await agentSession(a, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(a, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const { credential } = await mintLease(a, agent, taskId, { resource: "demo-api" });
    const ms = await inactiveAfter(credential.token as string, () =>
      b.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200),
    );
    expect(ms).to.be.lessThan(500);
  });

  it("holds a lease read only if the change stream was heard, without a reset, from before the read to its reply", async () => {
    const agent = await agentSession(a, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(a, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const operator = { kind: "operator", id: "ops" } as const;
    // The change stream as this test sets it: heard (or not), and reset (or not) while a read is out.
    const stream = { connected: true, epoch: 0, resetDuringRead: false };
    const changes = {
      subscribe: () => () => {},
      get connected() {
        return stream.connected;
      },
      get epoch() {
        return stream.epoch;
      },
    };
    // The broker's own Redis client, its reads announcing a reset in flight when asked to.
    const redis = new Proxy(a.broker.redis, {
      get(target, name, receiver) {
        if (name !== "mget") return Reflect.get(target, name, receiver);
        return async (...keys: string[]) => {
          const pending = target.mget(...keys);
          if (stream.resetDuringRead) stream.epoch += 1;
          return pending;
        };
      },
    });
    const { deps } = a.broker.introspection as unknown as {
      deps: ConstructorParameters<typeof Introspection>[0];
    };
    /** Whether an introspection held what it read: it still answers active after the lease is released. */
    async function held(setting: Partial<typeof stream>): Promise<boolean> {
      Object.assign(stream, { connected: true, resetDuringRead: false }, setting);
      const { lease, credential } = await mintLease(a, agent, taskId, { resource: "demo-api" });
      const token = credential.token as string;
      // Its first use is recorded (a change of the lease) before the introspection under test.
      expect((await a.broker.introspection.introspect(token, operator)).active).to.equal(true);
      const introspection = new Introspection({ ...deps, redis, changes });
      expect((await introspection.introspect(token, operator)).active).to.equal(true);
      Object.assign(stream, { connected: true, resetDuringRead: false });
      await a.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
      return (await introspection.introspect(token, operator)).active;
    }
    // Without a change message (this test's stream never sends one), a held record lasts its second.
    expect(await held({}), "heard throughout: held").to.equal(true);
    expect(await held({ resetDuringRead: true }), "reset while the read was out").to.equal(false);
    expect(await held({ connected: false }), "not heard when the read was sent").to.equal(false);
  });

  it("builds and serializes an active answer once per lease and task as held, and again after any change", async () => {
    const agent = await agentSession(a, "repo:acme/app:ref:refs/heads/main");
    const taskId = await createTask(a, agent, { resources: [{ resource: "demo-api", scopes: ["read"] }] });
    const { lease, credential } = await mintLease(a, agent, taskId, { resource: "demo-api" });
    const token = credential.token as string;
    const { introspection } = a.broker;
    const operator = { kind: "operator", id: "ops" } as const;
    // The first answer records the lease's first use, a change to the lease; once nothing
    // changes any more (and this process hears of changes), the same answer comes back.
    const first = await introspection.introspect(token, operator);
    const started = performance.now();
    let second = await introspection.introspect(token, operator);
    let third = await introspection.introspect(token, operator);
    while (third !== second && performance.now() - started < 2000) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      second = third;
      third = await introspection.introspect(token, operator);
    }
    expect(third, "the same answer while nothing changed").to.equal(second);
    expect(third).to.deep.equal(first);
    expect(Object.isFrozen(third), "shared by every caller").to.equal(true);
    // A change message for the lease (any process's write sends one) drops what was held.
    const { keys } = a.broker;
    await a.redis.publish(keys.changesChannel, keys.forId(lease.id).lease(lease.id));
    let fourth = await introspection.introspect(token, operator);
    while (fourth === third && performance.now() - started < 4000) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      fourth = await introspection.introspect(token, operator);
    }
    expect(fourth, "built anew once the lease changed").not.to.equal(third);
    expect(fourth).to.deep.equal(third);
    expect(introspection.json(third)).to.equal(JSON.stringify(second));
    expect(second).to.include({ active: true, jti: lease.id });
    // Another process releases the lease: the answer is built from the new record, inactive.
    await b.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    const after = performance.now();
    let released = await introspection.introspect(token, operator);
    while (released.active && performance.now() - after < 2000)
      released = await introspection.introspect(token, operator);
    expect(released).to.deep.equal({ active: false });
    expect(introspection.json(released)).to.equal('{"active":false}');
  });
});
