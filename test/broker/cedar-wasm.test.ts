import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { expect } from "chai";

const SCRIPT = fileURLToPath(new URL("../fixtures/policy/wasm-deopt.ts", import.meta.url));

describe("cedar-wasm in this Node.js", () => {
  it("survives hot decisions deoptimized while a call grows the wasm memory (Node 20 aborted)", async function () {
    // A child process, since the failure is V8 aborting the whole process.
    this.timeout(60_000);
    const { code, stdout, stderr } = await new Promise<{
      code: number | null;
      stdout: string;
      stderr: string;
    }>((resolve) => {
      execFile(process.execPath, ["--import", "tsx", SCRIPT], { timeout: 55_000 }, (error, out, err) => {
        resolve({ code: error ? ((error as { code?: number }).code ?? null) : 0, stdout: out, stderr: err });
      });
    });
    expect(stderr).to.not.include("Fatal error");
    expect(code).to.equal(0);
    expect(stdout.trim()).to.equal("survived");
  });
});
