import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect } from "chai";
import { leaseReaches } from "../helpers/flows.ts";
import {
  buildOnce,
  CLI,
  cleanEnv,
  cli,
  type HttpTestBroker,
  jwtPayload,
  startHttpBroker,
  taskAsOperator,
  tempDir,
} from "./cli-harness.ts";

describe("cli: jitkey lease and jitkey complete", () => {
  let t: HttpTestBroker;
  let dir: string;

  before(async function () {
    this.timeout(60_000);
    await buildOnce();
    t = await startHttpBroker({ name: "cli-lease" });
    dir = await tempDir();
  });
  after(async () => {
    await t?.close();
  });

  const agentEnv = async (subject: string) => ({
    JITKEY_URL: t.url,
    JITKEY_IDENTITY_TOKEN: await t.agentToken(subject),
  });

  it("prints the credentials as JSON, leaves the task open, and `jitkey complete` revokes its leases", async () => {
    const env = await agentEnv("repo:acme/lease-json");
    const lease = await cli(["lease", "--resource", "demo-api:read", "--output", "json"], env);
    expect(lease.code, lease.stderr).to.equal(0);
    const printed = JSON.parse(lease.stdout) as {
      task: { id: string };
      leases: { lease: { id: string }; credential: { token: string } }[];
      env: Record<string, string>;
    };
    const [minted] = printed.leases;
    expect(printed.env.JITKEY_DEMO_API_TOKEN).to.equal(minted?.credential.token);
    expect(printed.env.JITKEY_TASK_ID).to.equal(printed.task.id);
    expect(lease.stderr, "the secret goes to stdout only").to.not.include(minted?.credential.token);
    expect(lease.stderr).to.include(`jitkey complete ${printed.task.id}`);
    expect((await taskAsOperator(t, printed.task.id)).status).to.equal("approved");

    const done = await cli(["complete", printed.task.id], env);
    expect(done.code, done.stderr).to.equal(0);
    expect(done.stdout).to.include("1 lease revoking");
    expect((await taskAsOperator(t, printed.task.id)).status).to.equal("completed");
    await leaseReaches(t, minted?.lease.id as string, "revoked");
    const again = await cli(["complete", printed.task.id], env);
    expect(again.code, "completing an ended task is task_closed").to.equal(3);
  });

  it("prints export lines a shell can eval", async () => {
    const env = await agentEnv("repo:acme/lease-env");
    const out = join(dir, "token.txt");
    const script = `eval "$("${process.execPath}" "${CLI}" lease --resource demo-api:read)" && printf %s "$JITKEY_DEMO_API_TOKEN" > "${out}" && printf %s "$JITKEY_TASK_ID"`;
    const { stdout: taskId } = await promisify(execFile)("sh", ["-c", script], { env: cleanEnv(env) });
    const token = await readFile(out, "utf8");
    expect(jwtPayload(token)).to.include({ task_id: taskId, scope: "read" });
  });

  it("mints for an existing task with --task, scopes defaulting to the task's, in dotenv form", async () => {
    const env = await agentEnv("repo:acme/lease-task");
    const created = await t.http
      .post("/v1/tasks")
      .set("Authorization", `Bearer ${env.JITKEY_IDENTITY_TOKEN}`)
      .send({ goal: "two steps, one task", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);
    const taskId = created.body.task.id as string;
    const lease = await cli(["lease", "--task", taskId, "--resource", "demo-api", "--output", "dotenv"], env);
    expect(lease.code, lease.stderr).to.equal(0);
    const vars = Object.fromEntries(
      lease.stdout
        .trim()
        .split("\n")
        .map((line) => line.split(/=(.*)/s).slice(0, 2)),
    );
    expect(vars.JITKEY_TASK_ID).to.equal(taskId);
    expect(jwtPayload(vars.JITKEY_DEMO_API_TOKEN as string)).to.include({ task_id: taskId, scope: "read" });
  });

  it("exits 2 when a task would be created without scopes, or the output format is unknown", async () => {
    const env = await agentEnv("repo:acme/lease-usage");
    expect((await cli(["lease", "--resource", "demo-api"], env)).code).to.equal(2);
    expect((await cli(["lease", "--resource", "demo-api:read", "--output", "yaml"], env)).code).to.equal(2);
  });
});
