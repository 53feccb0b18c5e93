import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { spawnBroker, waitForDevOperatorToken, waitForStart } from "../helpers/process.ts";
import { eventually } from "../helpers/redis.ts";

describe("process: npm start", () => {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
  });

  it("with no config and no Redis URL runs dev mode on a private redis-server, serves the walkthrough, and stops it on exit", async function () {
    this.timeout(40_000);
    const dataDir = await mkdtemp(join(tmpdir(), "jitkey-start-"));
    const broker = spawnBroker({ JITKEY_DATA_DIR: dataDir, PORT: "0" });
    children.push(broker.child);
    const started = await waitForStart(broker);
    expect(started.devMode).to.equal(true);
    // The banner goes to stderr just after the log line on stdout: two pipes, no order between them.
    await eventually(async () => broker.stderr().includes("DEV MODE"), 5000);
    const operatorToken = await waitForDevOperatorToken(broker);
    expect(operatorToken).to.match(/^jkop_/);
    // The operator token is shown once on the terminal, never in the structured log.
    expect(broker.stdout()).to.not.include(operatorToken);

    const ready = await eventually(async () => {
      const res = await fetch(`${started.url}/readyz`);
      return res.status === 200 ? res.json() : undefined;
    });
    expect(ready).to.include({ redis: true });

    const json = (body: unknown, token: string) => ({
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const { token: agentToken } = (await (
      await fetch(`${started.url}/v1/dev/agent-token`, json({ agent: "demo-agent" }, operatorToken))
    ).json()) as {
      token: string;
    };
    const created = await fetch(
      `${started.url}/v1/tasks`,
      json({ goal: "demo", resources: [{ resource: "demo-api", scopes: ["read"] }] }, agentToken),
    );
    expect(created.status).to.equal(201);
    const { task } = (await created.json()) as { task: { id: string; status: string } };
    expect(task.status).to.equal("pending");
    expect(
      (await fetch(`${started.url}/v1/tasks/${task.id}/approve`, json({}, operatorToken))).status,
    ).to.equal(200);
    const minted = await fetch(
      `${started.url}/v1/tasks/${task.id}/leases`,
      json({ resource: "demo-api" }, agentToken),
    );
    expect(minted.status).to.equal(201);

    const aofDir = join(dataDir, "redis");
    expect(existsSync(join(aofDir, "redis.pid"))).to.equal(true);
    expect((await readdir(aofDir)).some((name) => name.startsWith("appendonly"))).to.equal(true);

    broker.child.kill("SIGTERM");
    expect(await broker.exited).to.equal(0);
    expect(existsSync(join(aofDir, "redis.pid")), "the private redis-server is stopped").to.equal(false);
  });

  it("exits with a message saying how to install redis-server or set REDIS_URL when the binary is missing", async function () {
    this.timeout(20_000);
    const dataDir = await mkdtemp(join(tmpdir(), "jitkey-start-"));
    // A PATH holding node and nothing else: redis-server often sits beside node in /usr/bin.
    const bin = join(dataDir, "bin");
    await mkdir(bin);
    await symlink(process.execPath, join(bin, "node"));
    const broker = spawnBroker({ JITKEY_DATA_DIR: dataDir, PORT: "0", PATH: bin });
    children.push(broker.child);
    expect(await broker.exited).to.equal(3);
    expect(broker.stderr()).to.include("apt-get install redis-server").and.include("REDIS_URL");
  });

  it("refuses `serve` without a Redis URL instead of starting a private one", async function () {
    this.timeout(20_000);
    const dataDir = await mkdtemp(join(tmpdir(), "jitkey-start-"));
    const broker = spawnBroker({ JITKEY_DATA_DIR: dataDir, PORT: "0" }, ["serve"]);
    children.push(broker.child);
    expect(await broker.exited).to.equal(1);
    expect(broker.stderr()).to.include("REDIS_URL");
  });
});
