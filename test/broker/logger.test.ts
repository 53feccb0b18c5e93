import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { expect } from "chai";

const ROOT = join(import.meta.dirname, "..", "..");

/** Runs `body` (TypeScript, with `createLogger` in scope) in a fresh Node process; returns its stdout lines. */
function runLogging(body: string): { lines: Record<string, unknown>[]; status: number | null } {
  const script = `import { createLogger } from ${JSON.stringify(join(ROOT, "broker", "logger.ts"))};\n${body}`;
  const run = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: 20_000,
  });
  const lines = run.stdout
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { lines, status: run.status };
}

describe("the broker's logger on standard output", () => {
  it("writes every line of two loggers in order, one JSON object per line, redacted", () => {
    const { lines, status } = runLogging(`
      const a = createLogger({ level: "info" });
      const b = createLogger({ level: "info" });
      for (let i = 0; i < 500; i++) (i % 2 ? b : a).info("line", { i, token: "s3cret" });
      setTimeout(() => a.info("later", { i: 500 }), 20);
    `);
    expect(status).to.equal(0);
    expect(lines.map((line) => line.i)).to.deep.equal(Array.from({ length: 501 }, (_, i) => i));
    expect(lines.every((line) => line.token === undefined || line.token === "[redacted]")).to.equal(true);
    expect(lines[0]).to.include({ level: "info", message: "line", service: "jitkey", token: "[redacted]" });
  });

  it("writes what is still pending when the process exits at once", () => {
    const { lines, status } = runLogging(`
      const logger = createLogger({ level: "info" });
      logger.info("first");
      logger.error("fatal: exiting", { code: 3 });
      process.exit(3);
    `);
    expect(status).to.equal(3);
    expect(lines.map((line) => line.message)).to.deep.equal(["first", "fatal: exiting"]);
  });
});
