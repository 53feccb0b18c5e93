import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { expect } from "chai";
import { alreadyRedacted, createLogger } from "../../broker/logger.ts";

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

describe("redaction of log lines", () => {
  function logged(fields: Record<string, unknown>): Record<string, unknown> {
    const lines: string[] = [];
    createLogger({ sink: { write: (line: string) => lines.push(line) } }).info("x", fields);
    return JSON.parse(lines[0] ?? "{}") as Record<string, unknown>;
  }

  it("masks secret fields and secret-looking values at any depth, keeping hashes readable", () => {
    const line = logged({ outer: { clientSecret: "s3cret", note: "Bearer abc.def", tokenSha256: "ab12" } });
    expect(line.outer).to.deep.equal({ clientSecret: "[redacted]", note: "[redacted]", tokenSha256: "ab12" });
  });

  it("writes an object marked as already redacted as it is, without the mark", () => {
    const audit = alreadyRedacted({ id: "1-0-3", leaseId: "lse_1", reason: "expired" });
    const line = logged({ audit });
    expect(line.audit).to.deep.equal({ id: "1-0-3", leaseId: "lse_1", reason: "expired" });
    // The mark is the caller's promise: an unmarked copy of the same fields is checked again.
    expect(logged({ audit: { ...audit, secret: "x" } }).audit).to.include({ secret: "[redacted]" });
  });
});
