import { spawnSync } from "node:child_process";
import { mkdtemp, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import {
  type BrokerProcess,
  ROOT,
  spawnBroker,
  waitForDevOperatorToken,
  waitForStart,
} from "../helpers/process.ts";

/** The shell block between the walkthrough markers in README.md. */
async function readmeWalkthrough(): Promise<string> {
  const readme = await readFile(join(ROOT, "README.md"), "utf8");
  const section = /<!-- walkthrough:start -->\s*```bash\n([\s\S]*?)```\s*<!-- walkthrough:end -->/.exec(
    readme,
  );
  if (!section?.[1]) throw new Error("README.md has no walkthrough block");
  return section[1];
}

describe("README walkthrough", () => {
  let broker: BrokerProcess | undefined;
  after(() => {
    broker?.child.kill("SIGTERM");
  });

  it("works as written against `npm start` in dev mode", async function () {
    this.timeout(60_000);
    const script = await readmeWalkthrough();
    expect(script).to.include("export OP=jkop_...");
    broker = spawnBroker({ JITKEY_DATA_DIR: await mkdtemp(join(tmpdir(), "jitkey-readme-")), PORT: "0" });
    const { url } = await waitForStart(broker);
    const operatorToken = await waitForDevOperatorToken(broker);
    // What a reader does: paste the printed operator token into the first line.
    const run = spawnSync(
      "bash",
      ["-euo", "pipefail", "-c", script.replace("export OP=jkop_...", `export OP=${operatorToken}`)],
      {
        env: { ...process.env, JITKEY: url },
        encoding: "utf8",
        timeout: 45_000,
      },
    );
    expect(run.status, run.stderr).to.equal(0);
    const lines = run.stdout.trim().split("\n");
    expect(lines.slice(0, 7)).to.deep.equal(["pending", "1", "approved", "true", "1", "false", "revoked"]);
    const story = lines.slice(7).map((line) => line.split(" by ")[0]);
    expect(story).to.include.ordered.members([
      "task_created",
      "task_approved",
      "lease_issued",
      "introspected",
    ]);
    expect(story).to.include.members(["task_completed", "lease_revoked"]);
  });
});
