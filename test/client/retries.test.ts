import { expect } from "chai";
import {
  BrokerUnreachableError,
  JitkeyClient,
  JitkeyOperatorClient,
  RateLimitedError,
  UnavailableError,
} from "../../client/index.ts";
import { type HttpTestBroker, startHttpBroker } from "../cli/cli-harness.ts";
import { FlakyProxy } from "./flaky-proxy.ts";
import { rejection } from "./rejection.ts";

const TASK = /^\/v1\/tasks\/[^/]+$/;
const TASKS = /^\/v1\/tasks$/;
const MINT = /^\/v1\/tasks\/[^/]+\/leases$/;
const COMPLETE = /^\/v1\/tasks\/[^/]+\/complete$/;
const LEASE = /^\/v1\/leases\/[^/]+$/;

describe("client: retries only where repeating is safe", () => {
  let t: HttpTestBroker;
  let proxy: FlakyProxy;
  let client: JitkeyClient;
  let operator: JitkeyOperatorClient;
  const readDemo = [{ resource: "demo-api", scopes: ["read"] }];

  before(async () => {
    t = await startHttpBroker({ name: "client-retries" });
    proxy = new FlakyProxy(t.url);
    await proxy.start();
    client = new JitkeyClient({
      broker: proxy.url,
      identityToken: () => t.agentToken("repo:acme/retries"),
      retry: { attempts: 3, baseDelayMs: 10 },
    });
    operator = new JitkeyOperatorClient({ broker: t.url, operatorToken: t.operatorToken });
  });
  after(async () => {
    await proxy?.stop();
    await t?.close();
  });
  beforeEach(() => proxy.reset());

  it("retries a GET after a 503 and after a dropped connection", async () => {
    const task = await client.createTask({ goal: "read", resources: readDemo });
    proxy.reset();
    proxy.inject({ method: "GET", path: TASK, kind: "unavailable", times: 1 });
    proxy.inject({ method: "GET", path: TASK, kind: "reset", times: 1 });
    expect((await client.getTask(task.id)).id).to.equal(task.id);
    expect(proxy.count("GET", TASK)).to.equal(3);
    await client.complete(task.id);
  });

  it("retries completing a task and releasing a lease (idempotent)", async () => {
    const task = await client.createTask({ goal: "read", resources: readDemo });
    const { lease } = await client.mint(task.id, "demo-api");
    proxy.inject({ method: "DELETE", path: LEASE, kind: "reset", times: 1 });
    expect((await client.release(lease.id)).id).to.equal(lease.id);
    expect(proxy.count("DELETE", LEASE)).to.equal(2);
    proxy.inject({ method: "POST", path: COMPLETE, kind: "unavailable", times: 1 });
    expect((await client.complete(task.id)).task.status).to.equal("completed");
    expect(proxy.count("POST", COMPLETE)).to.equal(2);
  });

  it("never sends a task creation twice: not after a 503, not after a dropped connection", async () => {
    proxy.inject({ method: "POST", path: TASKS, kind: "unavailable", times: 1 });
    expect(await rejection(client.createTask({ goal: "read", resources: readDemo }))).to.be.instanceOf(
      UnavailableError,
    );
    expect(proxy.count("POST", TASKS)).to.equal(1);
    proxy.inject({ method: "POST", path: TASKS, kind: "reset", times: 1 });
    expect(await rejection(client.createTask({ goal: "read", resources: readDemo }))).to.be.instanceOf(
      BrokerUnreachableError,
    );
    expect(proxy.count("POST", TASKS)).to.equal(2);
  });

  it("never sends a mint twice after a 503 or a dropped connection", async () => {
    const task = await client.createTask({ goal: "read", resources: readDemo });
    proxy.inject({ method: "POST", path: MINT, kind: "unavailable", times: 1 });
    expect(await rejection(client.mint(task.id, "demo-api"))).to.be.instanceOf(UnavailableError);
    proxy.inject({ method: "POST", path: MINT, kind: "reset", times: 1 });
    expect(await rejection(client.mint(task.id, "demo-api"))).to.be.instanceOf(BrokerUnreachableError);
    expect(proxy.count("POST", MINT)).to.equal(2);
    const leases = await operator.listLeases({ taskId: task.id });
    expect(leases, "no lease was minted behind the client's back").to.have.length(0);
    await client.complete(task.id);
  });

  it("gives up after the configured attempts and throws the last error", async () => {
    proxy.inject({ method: "GET", path: TASK, kind: "rate-limited", times: 5 });
    expect(await rejection(client.getTask("tsk_any"))).to.be.instanceOf(RateLimitedError);
    expect(proxy.count("GET", TASK)).to.equal(3);
  });

  it("waits as long as Retry-After says before retrying", async () => {
    proxy.inject({ method: "GET", path: TASK, kind: "unavailable", times: 1, retryAfter: "1" });
    const task = await client.createTask({ goal: "read", resources: readDemo });
    const started = Date.now();
    await client.getTask(task.id);
    expect(Date.now() - started).to.be.at.least(950);
    await client.complete(task.id);
  });
});
