import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect } from "chai";
import { buildOnce } from "../cli/cli-harness.ts";
import { ROOT } from "../helpers/process.ts";

describe("client: the jitkey/client package export", () => {
  before(async function () {
    this.timeout(60_000);
    await buildOnce();
  });

  it("resolves `jitkey/client` to the built library, with its type declarations", async () => {
    const script = [
      'import { JitkeyClient, JitkeyOperatorClient, PolicyDeniedError } from "jitkey/client";',
      'const denied = new PolicyDeniedError(403, { code: "policy_denied", message: "no", reason: "scope" });',
      "console.log(typeof JitkeyClient, typeof JitkeyOperatorClient, denied.code, denied.reason);",
    ].join("\n");
    const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], {
      cwd: ROOT,
    });
    expect(stdout.trim()).to.equal("function function policy_denied scope");
    expect(existsSync(join(ROOT, "dist", "client", "index.d.ts"))).to.equal(true);
  });
});
