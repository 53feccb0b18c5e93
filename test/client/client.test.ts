import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { expect } from "chai";
import {
  ApprovalDeniedError,
  ApprovalTimeoutError,
  BrokerUnreachableError,
  ForbiddenError,
  InvalidRequestError,
  JitkeyApiError,
  JitkeyClient,
  JitkeyOperatorClient,
  NotFoundError,
  PolicyDeniedError,
  type Task,
  TaskNotApprovedError,
  UnauthenticatedError,
} from "../../client/index.ts";
import {
  closedPort,
  closeServer,
  type HttpTestBroker,
  jwtPayload,
  startHttpBroker,
} from "../cli/cli-harness.ts";
import { leaseReaches } from "../helpers/flows.ts";
import { TestIssuer } from "../helpers/identity.ts";
import { eventually } from "../helpers/redis.ts";
import { rejection } from "./rejection.ts";

describe("client: JitkeyClient and JitkeyOperatorClient", () => {
  let t: HttpTestBroker;
  let operator: JitkeyOperatorClient;

  before(async () => {
    t = await startHttpBroker({ name: "client" });
    operator = new JitkeyOperatorClient({ broker: t.url, operatorToken: t.operatorToken });
  });
  after(async () => {
    await t?.close();
  });

  const agent = (subject: string, broker = t.url) =>
    new JitkeyClient({
      broker,
      identityToken: () => t.agentToken(subject),
      retry: { attempts: 2, baseDelayMs: 10 },
    });
  const readDemo = [{ resource: "demo-api", scopes: ["read"] }];

  /** Thrown by a callback, to be told apart from anything the client throws. */
  class CallbackFailure extends Error {}

  it("withTask mints inside the callback, returns its value and completes the task", async () => {
    let taskId = "";
    let leaseId = "";
    const value = await agent("repo:acme/lib-ok").withTask(
      { goal: "read reports", resources: readDemo },
      async (task) => {
        taskId = task.id;
        const credential = await task.mint("demo-api", { ttlSeconds: 60 });
        leaseId = task.leases[0]?.id as string;
        expect(jwtPayload(credential.token as string)).to.include({ task_id: task.id, jti: leaseId });
        return "report";
      },
    );
    expect(value).to.equal("report");
    expect((await operator.getTask(taskId)).status).to.equal("completed");
    await leaseReaches(t, leaseId, "revoked");
  });

  it("withTask completes the task when the callback throws, and rethrows the callback's error", async () => {
    let taskId = "";
    let leaseId = "";
    const thrown = new CallbackFailure("report failed");
    const error = await rejection(
      agent("repo:acme/lib-throw").withTask({ goal: "read reports", resources: readDemo }, async (task) => {
        taskId = task.id;
        leaseId = (await task.mintLease("demo-api")).lease.id;
        throw thrown;
      }),
    );
    expect(error).to.equal(thrown);
    expect((await operator.getTask(taskId)).status).to.equal("completed");
    await leaseReaches(t, leaseId, "revoked");
  });

  it("withTask rethrows the callback's error, not the completion's, when completing fails too", async () => {
    // A second listener on the same broker, closed inside the callback: completion cannot reach it.
    const server = createServer(t.app);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const client = agent("repo:acme/lib-lost", `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    let taskId = "";
    const thrown = new CallbackFailure("lost the broker");
    const error = await rejection(
      client.withTask({ goal: "read reports", resources: readDemo }, async (task) => {
        taskId = task.id;
        await closeServer(server);
        throw thrown;
      }),
    );
    expect(error).to.equal(thrown);
    expect((await operator.getTask(taskId)).status, "completion never reached the broker").to.equal(
      "approved",
    );
    await operator.completeTask(taskId);
  });

  it("withTask throws the completion error when the callback succeeded but completion failed", async () => {
    const server = createServer(t.app);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const client = agent(
      "repo:acme/lib-lost-ok",
      `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    );
    let taskId = "";
    const error = await rejection(
      client.withTask({ goal: "read reports", resources: readDemo }, async (task) => {
        taskId = task.id;
        await closeServer(server);
        return "done";
      }),
    );
    expect(error).to.be.instanceOf(BrokerUnreachableError);
    await operator.completeTask(taskId);
  });

  it("withTask waits for an operator's approval", async () => {
    const subject = "agent-lib-wait";
    const approver = (async () => {
      const pending = await eventually(async () =>
        (await operator.listTasks({ status: "pending", agentId: `ci:${subject}` })).at(0),
      );
      await operator.approve(pending.id, { note: "go" });
    })();
    const approvedBy = await agent(subject).withTask(
      {
        goal: "fix records",
        resources: [{ resource: "records", scopes: ["read"] }],
        approvalTimeoutSeconds: 30,
      },
      async (task) => task.task.approvedBy,
    );
    await approver;
    expect(approvedBy).to.equal("alice");
  });

  it("withTask throws ApprovalDeniedError without calling back when an operator denies the task", async () => {
    const subject = "agent-lib-deny";
    void (async () => {
      const pending = await eventually(async () =>
        (await operator.listTasks({ status: "pending", agentId: `ci:${subject}` })).at(0),
      );
      await operator.deny(pending.id, { note: "no" });
    })();
    let called = false;
    const error = await rejection(
      agent(subject).withTask(
        { goal: "fix records", resources: [{ resource: "records", scopes: ["read"] }] },
        () => {
          called = true;
        },
      ),
    );
    expect(error).to.be.instanceOf(ApprovalDeniedError);
    expect(error).to.include({ code: "approval_denied", note: "no", deniedBy: "alice" });
    expect(called).to.equal(false);
  });

  it("waitForApproval throws ApprovalTimeoutError, and withTask withdraws the pending task", async () => {
    const client = agent("agent-lib-timeout");
    const task = await client.createTask({
      goal: "fix records",
      resources: [{ resource: "records", scopes: ["read"] }],
    });
    const error = await rejection(client.waitForApproval(task.id, { timeoutSeconds: 1 }));
    expect(error)
      .to.be.instanceOf(ApprovalTimeoutError)
      .and.include({ code: "approval_timeout", taskId: task.id });
    await client.complete(task.id);

    let withTaskId = "";
    const withTask = await rejection(
      client.withTask(
        {
          goal: "fix records",
          resources: [{ resource: "records", scopes: ["read"] }],
          approvalTimeoutSeconds: 1,
        },
        () => undefined,
      ),
    );
    expect(withTask).to.be.instanceOf(ApprovalTimeoutError);
    withTaskId = (withTask as ApprovalTimeoutError).taskId;
    expect((await operator.getTask(withTaskId)).status).to.equal("completed");
  });

  it("calls the identity token function before every request", async () => {
    let calls = 0;
    const client = new JitkeyClient({
      broker: t.url,
      identityToken: async () => {
        calls += 1;
        return t.agentToken("repo:acme/lib-rotate");
      },
    });
    const task: Task = await client.createTask({ goal: "read", resources: readDemo });
    await client.getTask(task.id);
    await client.complete(task.id);
    expect(calls).to.equal(3);
  });

  it("throws errors typed by the API's code, with status and request id", async () => {
    const client = agent("repo:acme/lib-errors");
    const denied = await rejection(
      client.createTask({ goal: "write", resources: [{ resource: "demo-api", scopes: ["write"] }] }),
    );
    expect(denied).to.be.instanceOf(PolicyDeniedError).and.instanceOf(JitkeyApiError);
    expect(denied).to.include({ code: "policy_denied", status: 403 });
    expect((denied as PolicyDeniedError).reason).to.be.a("string");
    expect((denied as PolicyDeniedError).requestId).to.match(/^req_/);

    const missing = await rejection(client.getTask("tsk_does_not_exist"));
    expect(missing).to.be.instanceOf(NotFoundError).and.include({ code: "not_found", status: 404 });

    const invalid = await rejection(client.createTask({ goal: "", resources: readDemo }));
    expect(invalid).to.be.instanceOf(InvalidRequestError).and.include({ code: "invalid_request" });

    const pending = await agent("agent-lib-errors").createTask({
      goal: "fix records",
      resources: [{ resource: "records", scopes: ["read"] }],
    });
    const early = await rejection(agent("agent-lib-errors").mint(pending.id, "records"));
    expect(early)
      .to.be.instanceOf(TaskNotApprovedError)
      .and.include({ code: "task_not_approved", status: 409 });
    await operator.completeTask(pending.id);

    const stranger = await TestIssuer.create("ci", "ES256", "https://issuer.test/stranger");
    const refused = await rejection(
      new JitkeyClient({ broker: t.url, identityToken: await stranger.token("repo:acme/app") }).getTask(
        pending.id,
      ),
    );
    expect(refused)
      .to.be.instanceOf(UnauthenticatedError)
      .and.include({ code: "unauthenticated", status: 401 });

    const agentAsOperator = new JitkeyOperatorClient({
      broker: t.url,
      operatorToken: await t.agentToken("repo:acme/x"),
    });
    const wrongPrincipal = await rejection(agentAsOperator.listTasks());
    expect(wrongPrincipal).to.be.instanceOf(ForbiddenError).and.include({ code: "forbidden", status: 403 });
  });

  it("throws BrokerUnreachableError when nothing answers", async () => {
    const client = agent("repo:acme/lib-gone", `http://127.0.0.1:${await closedPort()}`);
    const error = await rejection(client.getTask("tsk_x"));
    expect(error).to.be.instanceOf(BrokerUnreachableError).and.include({ code: "broker_unreachable" });
  });

  it("pages through the audit trail with the after cursor", async () => {
    const client = agent("repo:acme/lib-audit");
    const task = await client.createTask({ goal: "read", resources: readDemo });
    await client.mint(task.id, "demo-api");
    await client.complete(task.id);
    const events = [];
    for await (const event of operator.auditEvents({ taskId: task.id }, { pageSize: 1 }))
      events.push(event.type);
    expect(events.slice(0, 3)).to.deep.equal(["task_created", "task_approved", "lease_issued"]);
    expect(events).to.include("task_completed");
  });
});
