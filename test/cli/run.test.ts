import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { expect } from "chai";
import { leaseReaches } from "../helpers/flows.ts";
import { TestIssuer } from "../helpers/identity.ts";
import { eventually } from "../helpers/redis.ts";
import {
  buildOnce,
  type CliProcess,
  cli,
  closedPort,
  FIXTURES,
  type HttpTestBroker,
  identityTokenFile,
  jwtPayload,
  runArgs,
  startCli,
  startHttpBroker,
  taskAsOperator,
  tempDir,
} from "./cli-harness.ts";

const RECORD = join(FIXTURES, "record-env.mjs");
const WAIT = join(FIXTURES, "wait-for-signal.mjs");

interface Recorded {
  argv: string[];
  env: Record<string, string>;
  /** Set by wait-for-signal.mjs. */
  pid?: number;
}

describe("cli: jitkey run", () => {
  let t: HttpTestBroker;
  let dir: string;
  let subjects = 0;
  /** A fresh agent subject per test; `repo:acme/*` is auto-approved for demo-api:read, `agent-*` needs an operator. */
  const subject = (kind: "auto" | "manual") =>
    kind === "auto" ? `repo:acme/run-${++subjects}` : `agent-run-${++subjects}`;

  before(async function () {
    this.timeout(60_000);
    await buildOnce();
    t = await startHttpBroker({ name: "cli-run" });
    dir = await tempDir();
  });
  after(async () => {
    await t?.close();
  });

  /** Processes a failed test may leave running: jitkey and the long-running command it started. */
  const leftovers: { cli: CliProcess[]; commands: number[] } = { cli: [], commands: [] };
  afterEach(() => {
    for (const run of leftovers.cli.splice(0)) if (run.child.exitCode === null) run.child.kill("SIGKILL");
    for (const pid of leftovers.commands.splice(0)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already gone, as it should be.
      }
    }
  });
  const started = (run: CliProcess) => {
    leftovers.cli.push(run);
    return run;
  };
  /** Waits for the command to record what it got; remembers a waiting command's pid for cleanup. */
  const recordedBy = (out: string) =>
    eventually(async () => {
      if (!existsSync(out)) return undefined;
      const recorded = JSON.parse(await readFile(out, "utf8")) as Recorded;
      if (recorded.pid) leftovers.commands.push(recorded.pid);
      return recorded;
    });

  const env = (extra: Record<string, string> = {}) => ({ JITKEY_URL: t.url, ...extra });
  const operatorEnv = () => env({ JITKEY_OPERATOR_TOKEN: t.operatorToken });
  const taskStatus = async (taskId: string) => (await taskAsOperator(t, taskId)).status;

  async function pendingTaskOf(agentId: string): Promise<string> {
    return eventually(async () => {
      const res = await t.http
        .get("/v1/tasks")
        .query({ status: "pending" })
        .set("Authorization", `Bearer ${t.operatorToken}`);
      return (res.body.tasks as { id: string; agentId: string }[]).find((task) => task.agentId === agentId)
        ?.id;
    });
  }

  it("runs the command with the credential in its environment only, completes the task and exits 0", async () => {
    const tokenFile = await identityTokenFile(t, dir, subject("auto"));
    const out = join(dir, "ok.json");
    const run = await cli(runArgs("demo-api:read", tokenFile, process.execPath, RECORD, out, "0"), env());
    expect(run.code, run.stderr).to.equal(0);
    const recorded = JSON.parse(await readFile(out, "utf8")) as Recorded;
    const token = recorded.env.JITKEY_DEMO_API_TOKEN as string;
    const taskId = recorded.env.JITKEY_TASK_ID as string;
    expect(token).to.be.a("string");
    expect(jwtPayload(token)).to.include({ task_id: taskId, scope: "read" });
    expect(recorded.env.JITKEY_DEMO_API_TYPE).to.equal("bearer");
    expect(recorded.env.JITKEY_DEMO_API_EXPIRES_AT).to.match(/^\d{4}-\d\d-\d\dT/);
    const leaseId = recorded.env.JITKEY_DEMO_API_LEASE_ID as string;
    expect(jwtPayload(token).jti).to.equal(leaseId);
    // The secret reached the command's environment and nothing else: not its argv, not jitkey's output.
    expect(recorded.argv.join(" ")).to.not.include(token);
    expect(run.stdout + run.stderr).to.not.include(token);
    expect(await taskStatus(taskId)).to.equal("completed");
    await leaseReaches(t, leaseId, "revoked");
  });

  it("exits with the command's own status when it fails, and still completes the task", async () => {
    const tokenFile = await identityTokenFile(t, dir, subject("auto"));
    const out = join(dir, "fail.json");
    const run = await cli(runArgs("demo-api:read", tokenFile, process.execPath, RECORD, out, "7"), env());
    expect(run.code).to.equal(7);
    const recorded = JSON.parse(await readFile(out, "utf8")) as Recorded;
    expect(await taskStatus(recorded.env.JITKEY_TASK_ID as string)).to.equal("completed");
    await leaseReaches(t, recorded.env.JITKEY_DEMO_API_LEASE_ID as string, "revoked");
  });

  it("exits 127 when the command does not exist, and completes the task", async () => {
    const agent = subject("auto");
    const tokenFile = await identityTokenFile(t, dir, agent);
    const run = await cli(runArgs("demo-api:read", tokenFile, join(dir, "no-such-program")), env());
    expect(run.code).to.equal(127);
    const taskId = /created task (\S+)/.exec(run.stderr)?.[1] as string;
    expect(await taskStatus(taskId)).to.equal("completed");
  });

  it("exits 3 without running the command when policy denies the task", async () => {
    const tokenFile = await identityTokenFile(t, dir, subject("auto"));
    const out = join(dir, "denied.json");
    const run = await cli(runArgs("demo-api:write", tokenFile, process.execPath, RECORD, out), env());
    expect(run.code).to.equal(3);
    expect(run.stderr).to.include("policy_denied");
    expect(existsSync(out)).to.equal(false);
  });

  it("waits while the task is pending, prints the approve command, and proceeds once an operator approves", async () => {
    const agent = subject("manual");
    const tokenFile = await identityTokenFile(t, dir, agent);
    const out = join(dir, "approved.json");
    const run = started(
      startCli(
        [
          "run",
          "--resource",
          "demo-api:read,write",
          "--identity-token-file",
          tokenFile,
          "--goal",
          "ship release 1.4",
          "--",
          process.execPath,
          RECORD,
          out,
        ],
        env(),
      ),
    );
    const taskId = await pendingTaskOf(`ci:${agent}`);
    await eventually(async () => run.stderr().includes(`jitkey approve ${taskId} --broker ${t.url}`));
    expect(existsSync(out), "the command waits for approval").to.equal(false);
    const approve = await cli(["approve", taskId, "--note", "fine"], operatorEnv());
    expect(approve.code, approve.stderr).to.equal(0);
    expect((await run.exited).code, run.stderr()).to.equal(0);
    const recorded = JSON.parse(await readFile(out, "utf8")) as Recorded;
    expect(recorded.env.JITKEY_TASK_ID).to.equal(taskId);
    expect(jwtPayload(recorded.env.JITKEY_DEMO_API_TOKEN as string).scope).to.equal("read write");
    expect(await taskStatus(taskId)).to.equal("completed");
  });

  it("exits 3 without running the command when an operator denies the task", async () => {
    const agent = subject("manual");
    const tokenFile = await identityTokenFile(t, dir, agent);
    const out = join(dir, "denied-by-operator.json");
    const run = started(startCli(runArgs("demo-api:read", tokenFile, process.execPath, RECORD, out), env()));
    const taskId = await pendingTaskOf(`ci:${agent}`);
    const deny = await cli(["deny", taskId, "--note", "not now"], operatorEnv());
    expect(deny.code, deny.stderr).to.equal(0);
    expect((await run.exited).code).to.equal(3);
    expect(run.stderr()).to.include("approval_denied");
    expect(existsSync(out)).to.equal(false);
  });

  it("exits 3 when nobody approves within --approval-timeout, and withdraws the pending task", async () => {
    const agent = subject("manual");
    const tokenFile = await identityTokenFile(t, dir, agent);
    const run = await cli(
      [
        "run",
        "--resource",
        "demo-api:read",
        "--approval-timeout",
        "1",
        "--identity-token-file",
        tokenFile,
        "--",
        "true",
      ],
      env(),
    );
    expect(run.code).to.equal(3);
    expect(run.stderr).to.include("approval_timeout");
    const taskId = /created task (\S+)/.exec(run.stderr)?.[1] as string;
    expect(await taskStatus(taskId)).to.equal("completed");
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    it(`on ${signal} passes the signal to the command, completes the task, revokes its leases and exits 128+N`, async () => {
      const tokenFile = await identityTokenFile(t, dir, subject("auto"));
      const out = join(dir, `signal-${signal}.json`);
      const run = started(startCli(runArgs("demo-api:read", tokenFile, process.execPath, WAIT, out), env()));
      const recorded = await recordedBy(out);
      // Only jitkey gets the signal (not the process group): the command hears of it from jitkey.
      run.child.kill(signal);
      const { code } = await run.exited;
      expect(code).to.equal(signal === "SIGTERM" ? 143 : 130);
      expect(await readFile(`${out}.signal`, "utf8")).to.equal(signal);
      expect(await taskStatus(recorded.env.JITKEY_TASK_ID as string)).to.equal("completed");
      await leaseReaches(t, recorded.env.JITKEY_DEMO_API_LEASE_ID as string, "revoked");
    });
  }

  it("when jitkey itself is SIGKILLed, the task's TTL still ends the lease", async () => {
    const tokenFile = await identityTokenFile(t, dir, subject("auto"));
    const out = join(dir, "sigkill.json");
    const run = started(
      startCli(
        ["run", "--ttl", "2", ...runArgs("demo-api:read", tokenFile, process.execPath, WAIT, out).slice(1)],
        env(),
      ),
    );
    const recorded = await recordedBy(out);
    run.child.kill("SIGKILL");
    // The orphaned command holds jitkey's output pipes open: end it too, as a dying runner would.
    process.kill(recorded.pid as number, "SIGKILL");
    expect((await run.exited).signal).to.equal("SIGKILL");
    const lease = await leaseReaches(t, recorded.env.JITKEY_DEMO_API_LEASE_ID as string, "revoked", 10_000);
    expect(lease.revokeReason).to.equal("expired");
  });

  it("on SIGTERM while waiting for approval withdraws the task and exits 143", async () => {
    const agent = subject("manual");
    const tokenFile = await identityTokenFile(t, dir, agent);
    const run = started(startCli(runArgs("demo-api:read", tokenFile, "true"), env()));
    const taskId = await pendingTaskOf(`ci:${agent}`);
    run.child.kill("SIGTERM");
    expect((await run.exited).code).to.equal(143);
    expect(await taskStatus(taskId)).to.equal("completed");
  });

  it("exits 5 when the broker is unreachable", async () => {
    const tokenFile = await identityTokenFile(t, dir, subject("auto"));
    const run = await cli(runArgs("demo-api:read", tokenFile, "true"), {
      JITKEY_URL: `http://127.0.0.1:${await closedPort()}`,
    });
    expect(run.code).to.equal(5);
    expect(run.stderr).to.include("broker_unreachable");
  });

  it("exits 4 when the broker refuses the identity token", async () => {
    const stranger = await TestIssuer.create("ci", "ES256", "https://issuer.test/stranger");
    const out = join(dir, "stranger.jwt");
    await writeFile(out, await stranger.token("repo:acme/app"));
    const run = await cli(runArgs("demo-api:read", out, "true"), env());
    expect(run.code).to.equal(4);
    expect(run.stderr).to.include("unauthenticated");
  });

  it("exits 4 when no identity token is available", async () => {
    const run = await cli(["run", "--resource", "demo-api:read", "--", "true"], env());
    expect(run.code).to.equal(4);
    expect(run.stderr).to.include("identity_unavailable");
  });

  it("exits 2 with one line for a usage error", async () => {
    const run = await cli(["run", "--resource", "demo-api", "--", "true"], env());
    expect(run.code).to.equal(2);
    expect(run.stderr.trim().split("\n")).to.have.length(1);
    const noCommand = await cli(["run", "--resource", "demo-api:read"], env());
    expect(noCommand.code).to.equal(2);
    const unknown = await cli(["run", "--resource", "demo-api:read", "--nope", "--", "true"], env());
    expect(unknown.code).to.equal(2);
  });
});
