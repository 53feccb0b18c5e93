import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { agentSession, createTask, leaseReaches, mintLease, operatorHeaders } from "../helpers/flows.ts";
import { eventually } from "../helpers/redis.ts";
import { buildOnce, cli, type HttpTestBroker, startCli, startHttpBroker } from "./cli-harness.ts";

describe("cli: operator commands", () => {
  let t: HttpTestBroker;

  before(async function () {
    this.timeout(60_000);
    await buildOnce();
    t = await startHttpBroker({ name: "cli-operator" });
  });
  after(async () => {
    await t?.close();
  });

  const env = () => ({ JITKEY_URL: t.url, JITKEY_OPERATOR_TOKEN: t.operatorToken });
  const json = async <T>(args: string[]): Promise<T> => {
    const run = await cli([...args, "--output", "json"], env());
    expect(run.code, run.stderr).to.equal(0);
    return JSON.parse(run.stdout) as T;
  };

  it("lists pending tasks as JSON and as a table", async () => {
    const agent = await agentSession(t, "agent-op-list");
    const taskId = await createTask(t, agent, { approve: false });
    const { tasks } = await json<{ tasks: { id: string; status: string }[] }>([
      "tasks",
      "--status",
      "pending",
    ]);
    expect(tasks.find((task) => task.id === taskId)?.status).to.equal("pending");
    const table = await cli(["tasks", "--status", "pending", "--agent", agent.agentId], env());
    expect(table.code).to.equal(0);
    const [heading, row] = table.stdout.trim().split("\n");
    expect(heading).to.match(/^ID\s+STATUS\s+AGENT/);
    expect(row).to.include(taskId).and.include("pending");
  });

  it("exits 3 when approving a task that is no longer pending", async () => {
    const agent = await agentSession(t, "agent-op-twice");
    const taskId = await createTask(t, agent, { approve: false });
    const first = await json<{ task: { status: string; approvedBy: string } }>([
      "approve",
      taskId,
      "--note",
      "ok",
    ]);
    expect(first.task).to.include({ status: "approved", approvedBy: "alice" });
    const second = await cli(["deny", taskId], env());
    expect(second.code).to.equal(3);
    expect(second.stderr).to.include("task_closed");
  });

  it("approves narrower than asked: fewer scopes and a shorter life", async () => {
    const agent = await agentSession(t, "agent-op-narrow");
    const taskId = await createTask(t, agent, { approve: false, ttlSeconds: 600 });
    const { task } = await json<{
      task: { status: string; resources: { resource: string; scopes: string[] }[]; expiresAt: string };
    }>(["approve", taskId, "--resource", "records:read", "--ttl", "60"]);
    expect(task.status).to.equal("approved");
    expect(task.resources).to.deep.equal([{ resource: "records", scopes: ["read"], owner: "data-team" }]);
    expect(Date.parse(task.expiresAt) - Date.now()).to.be.at.most(61_000);
    const wider = await createTask(t, agent, { approve: false });
    const refused = await cli(["approve", wider, "--resource", "records:admin"], env());
    expect(refused.code).to.not.equal(0);
    expect(refused.stderr).to.include("invalid_request");
  });

  it("lists a task's leases and revokes them, saying how many leases it hit and tasks it ended", async () => {
    const agent = await agentSession(t, "agent-op-revoke");
    const taskId = await createTask(t, agent);
    const { lease } = await mintLease(t, agent, taskId);
    const { leases } = await json<{ leases: { id: string; status: string }[] }>(["leases", "--task", taskId]);
    expect(leases.map((l) => [l.id, l.status])).to.deep.equal([[lease.id, "active"]]);

    const revoke = await cli(["revoke", "--task", taskId, "--reason", "incident 42"], env());
    expect(revoke.code, revoke.stderr).to.equal(0);
    expect(revoke.stdout).to.match(/1 lease hit, 1 task ended/);
    await leaseReaches(t, lease.id, "revoked");
    const task = await t.http.get(`/v1/tasks/${taskId}`).set(operatorHeaders(t)).expect(200);
    expect(task.body.task.status).to.equal("revoked");
  });

  it("revoke --output json reports matched leases and ended tasks", async () => {
    const agent = await agentSession(t, "agent-op-revoke-json");
    const taskId = await createTask(t, agent);
    await mintLease(t, agent, taskId);
    await mintLease(t, agent, taskId);
    const { revocation } = await json<{ revocation: { matched: number; tasksRevoked: number } }>([
      "revoke",
      "--agent",
      agent.agentId,
      "--reason",
      "rotate",
    ]);
    expect(revocation).to.include({ matched: 2, tasksRevoked: 1 });
  });

  it("exits 2 unless revoke names exactly one selector and a reason", async () => {
    expect(
      (await cli(["revoke", "--task", "tsk_a", "--agent", "ci:x", "--reason", "r"], env())).code,
    ).to.equal(2);
    expect((await cli(["revoke", "--reason", "r"], env())).code).to.equal(2);
    expect((await cli(["revoke", "--all"], env())).code).to.equal(2);
  });

  it("prints a task's audit trail oldest first", async () => {
    const agent = await agentSession(t, "agent-op-audit");
    const taskId = await createTask(t, agent);
    await mintLease(t, agent, taskId);
    const { events } = await json<{ events: { type: string; taskId: string }[] }>([
      "audit",
      "--task",
      taskId,
    ]);
    expect(events.map((e) => e.type)).to.deep.equal(["task_created", "task_approved", "lease_issued"]);
    const lines = await cli(["audit", "--task", taskId, "--limit", "2"], env());
    expect(lines.stdout.trim().split("\n")).to.have.length(2);
    expect(lines.stdout).to.include("task_created").and.include("task_approved");
  });

  it("audit verify checks the hash chain at the broker, and offline over an export, catching an edit", async () => {
    const agent = await agentSession(t, "agent-op-verify");
    await mintLease(t, agent, await createTask(t, agent));
    await t.broker.sealer.sealAll();
    const atBroker = await cli(["audit", "verify"], env());
    expect(atBroker.code, atBroker.stderr).to.equal(0);
    expect(atBroker.stdout).to.match(/^audit trail intact: \d+ events verified/);

    const exported = await cli(["audit", "export"], env());
    expect(exported.code, exported.stderr).to.equal(0);
    const dir = await mkdtemp(join(tmpdir(), "jitkey-cli-audit-"));
    const file = join(dir, "audit.jsonl");
    await writeFile(file, exported.stdout);
    // Offline: no broker, no token.
    const offline = await cli(["audit", "verify", "--file", file, "--output", "json"], {});
    expect(offline.code, offline.stderr).to.equal(0);
    expect(JSON.parse(offline.stdout)).to.include({ ok: true });
    await writeFile(file, exported.stdout.replace('\\"decision\\":\\"allow\\"', '\\"decision\\":\\"deny\\"'));
    const tampered = await cli(["audit", "verify", "--file", file], {});
    expect(tampered.code).to.equal(1);
    expect(tampered.stdout).to.include("BROKEN");
    expect((await cli(["audit", "check"], env())).code).to.equal(2);
  });

  it("audit --follow prints events that happen after it started, until interrupted", async () => {
    const agent = await agentSession(t, "agent-op-follow");
    const follow = startCli(
      ["audit", "--agent", agent.agentId, "--follow", "--interval", "1", "--output", "json"],
      env(),
    );
    try {
      const taskId = await createTask(t, agent, { approve: false });
      await eventually(async () => follow.stdout().includes(`"taskId":"${taskId}"`), 10_000);
      await t.http.post(`/v1/tasks/${taskId}/approve`).set(operatorHeaders(t)).send({}).expect(200);
      const types = await eventually(async () => {
        const seen = follow
          .stdout()
          .trim()
          .split("\n")
          .map((line) => (JSON.parse(line) as { type: string }).type);
        return seen.includes("task_approved") ? seen : undefined;
      }, 10_000);
      expect(types).to.deep.equal(["task_created", "task_approved"]);
      follow.child.kill("SIGINT");
      expect((await follow.exited).code).to.equal(0);
    } finally {
      if (follow.child.exitCode === null) follow.child.kill("SIGKILL");
    }
  });

  it("exits 4 without an operator token or with a wrong one", async () => {
    const missing = await cli(["tasks"], { JITKEY_URL: t.url });
    expect(missing.code).to.equal(4);
    const wrong = await cli(["tasks"], { JITKEY_URL: t.url, JITKEY_OPERATOR_TOKEN: "op-wrong" });
    expect(wrong.code).to.equal(4);
    expect(wrong.stderr).to.include("unauthenticated");
  });

  it("shows help with an example for the whole CLI and every command", async () => {
    const overall = await cli(["--help"]);
    expect(overall.code).to.equal(0);
    const commands = ["run", "lease", "complete", "tasks", "approve", "deny", "leases", "revoke", "audit"];
    for (const command of commands) expect(overall.stdout).to.include(`  ${command} `);
    for (const command of commands) {
      const help = await cli([command, "--help"]);
      expect(help.code, command).to.equal(0);
      expect(help.stdout, command)
        .to.match(/^Usage: jitkey /)
        .and.match(/Examples?:\n {2}\S/);
    }
    const unknown = await cli(["frobnicate"]);
    expect(unknown.code).to.equal(2);
  });
});
