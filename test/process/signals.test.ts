import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { captureOutput, ROOT, spawnBroker, waitForStart } from "../helpers/process.ts";
import { eventually } from "../helpers/redis.ts";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Child pids of `pid` (Linux /proc). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

async function redisPid(dataDir: string): Promise<number> {
  return eventually(
    async () => Number((await readFile(join(dataDir, "redis", "redis.pid"), "utf8")).trim()) || undefined,
  );
}

describe("process: signals and a killed broker leave nothing running", () => {
  const leftovers: number[] = [];
  afterEach(() => {
    for (const pid of leftovers.splice(0)) if (alive(pid)) process.kill(pid, "SIGKILL");
  });

  it("stops node and its private redis-server when npm start gets SIGTERM (what process managers send)", async function () {
    this.timeout(60_000);
    const dataDir = await mkdtemp(join(tmpdir(), "jitkey-npm-start-"));
    const npm = spawn("npm", ["start"], {
      cwd: ROOT,
      env: {
        ...process.env,
        REDIS_URL: undefined,
        JITKEY_CONFIG: undefined,
        JITKEY_DATA_DIR: dataDir,
        PORT: "0",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const broker = captureOutput(npm);
    await waitForStart(broker, 45_000);
    const redis = await redisPid(dataDir);
    const node = childrenOf(npm.pid as number);
    expect(node, "npm runs node directly, not through a shell").to.have.length(1);
    leftovers.push(redis, ...node);
    expect(readFileSync(`/proc/${node[0]}/cmdline`, "utf8")).to.include("dist/broker/main.js");

    npm.kill("SIGTERM");
    await broker.exited;
    await eventually(async () => !alive(node[0] as number) && !alive(redis), 10_000);
    expect(broker.stdout()).to.include('"shutting down"');
    expect(broker.stdout()).to.include('"stopped"');
  });

  it("takes its private redis-server down with it when the broker is SIGKILLed", async function () {
    this.timeout(40_000);
    const dataDir = await mkdtemp(join(tmpdir(), "jitkey-killed-"));
    const broker = spawnBroker({ JITKEY_DATA_DIR: dataDir, PORT: "0" });
    await waitForStart(broker);
    const redis = await redisPid(dataDir);
    leftovers.push(redis);
    expect(alive(redis)).to.equal(true);

    broker.child.kill("SIGKILL");
    await broker.exited;
    await eventually(async () => !alive(redis), 10_000);
  });
});
