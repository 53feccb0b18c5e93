import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import { expect } from "chai";
import {
  buildOnce,
  CLI,
  cleanEnv,
  type HttpTestBroker,
  identityTokenFile,
  startHttpBroker,
  tempDir,
} from "./cli-harness.ts";

const SCRIPT = ["/usr/bin/script", "/bin/script"].find((path) => existsSync(path));

/** Runs the CLI on a pseudo-terminal (util-linux `script`); stdout and stderr arrive merged. */
async function onTerminal(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; output: string }> {
  const quoted = [process.execPath, CLI, ...args].map((arg) => `'${arg.replace(/'/g, `'\\''`)}'`).join(" ");
  try {
    const { stdout } = await promisify(execFile)(SCRIPT as string, ["-qefc", quoted, "/dev/null"], {
      env: cleanEnv(env),
    });
    return { code: 0, output: stdout };
  } catch (error) {
    const failed = error as { code: number; stdout: string };
    return { code: failed.code, output: failed.stdout };
  }
}

describe("cli: on a terminal", () => {
  let t: HttpTestBroker;
  let dir: string;

  before(async function () {
    if (!SCRIPT) {
      console.warn("    skipped: util-linux `script` (a pseudo-terminal) is not installed");
      this.skip();
    }
    this.timeout(60_000);
    await buildOnce();
    t = await startHttpBroker({ name: "cli-terminal" });
    dir = await tempDir();
  });
  after(async () => {
    await t?.close();
  });

  it("shows a spinner and the exact approve command while waiting for approval", async () => {
    const tokenFile = await identityTokenFile(t, dir, "agent-terminal");
    const { code, output } = await onTerminal(
      [
        "run",
        "--resource",
        "demo-api:read",
        "--approval-timeout",
        "2",
        "--identity-token-file",
        tokenFile,
        "--",
        "true",
      ],
      { JITKEY_URL: t.url },
    );
    expect(code).to.equal(3);
    const taskId = /created task (\S+)/.exec(output)?.[1];
    expect(output).to.include(`jitkey approve ${taskId} --broker ${t.url}`);
    expect(output).to.match(/[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] waiting for approval of /);
  });

  it("refuses to print credentials to a terminal (exit 2)", async () => {
    const tokenFile = await identityTokenFile(t, dir, "repo:acme/terminal");
    const { code, output } = await onTerminal(
      ["lease", "--resource", "demo-api:read", "--identity-token-file", tokenFile],
      { JITKEY_URL: t.url },
    );
    expect(code).to.equal(2);
    expect(output).to.include("refusing to print credentials to a terminal");
  });
});
