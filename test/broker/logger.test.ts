import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { expect } from "chai";
import { createLogger } from "../../broker/logger.ts";

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
});

describe("request lines", () => {
  function both(
    line: Parameters<ReturnType<typeof createLogger>["request"]>[0],
    level: "info" | "warn" = "info",
  ) {
    const lines: string[] = [];
    const logger = createLogger({ level, sink: { write: (text: string) => lines.push(text) } });
    logger.request(line);
    logger.info("request", { ...line });
    return lines;
  }

  it('writes what info("request", fields) writes, field for field and in the same order', () => {
    const lines = both({
      requestId: "req_1",
      method: "POST",
      path: '/v1/odd "path"\\ é\u0001',
      status: 201,
      ms: 1.234567,
    });
    expect(lines).to.have.length(2);
    const [direct, general] = lines.map((text) => JSON.parse(text) as Record<string, unknown>);
    expect(lines[0]?.endsWith("}\n")).to.equal(true);
    expect(Object.keys(direct ?? {})).to.deep.equal(Object.keys(general ?? {}));
    expect({ ...direct, timestamp: 0 }).to.deep.equal({ ...general, timestamp: 0 });
    expect(direct).to.include({ level: "info", message: "request", path: '/v1/odd "path"\\ é\u0001' });
  });

  it("masks a credential in the path, and writes nothing below info", () => {
    const jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
    const [direct] = both({ requestId: "req_2", method: "GET", path: `/v1/x/${jwt}`, status: 404, ms: 0.5 });
    expect(JSON.parse(direct ?? "{}").path).to.equal("/v1/x/[redacted]");
    expect(both({ requestId: "req_3", method: "GET", path: "/", status: 200, ms: 1 }, "warn")).to.deep.equal(
      [],
    );
  });
});

describe("lines with a field already serialized", () => {
  it("writes what info(message, { field: parsed }) writes", () => {
    const json = JSON.stringify({ id: "1-0-3", at: "2026-01-01T00:00:00.000Z", note: 'a "quote" é' });
    const lines: string[] = [];
    const logger = createLogger({ sink: { write: (text: string) => lines.push(text) } });
    logger.infoWithJson("audit", "audit", json);
    logger.info("audit", { audit: JSON.parse(json) });
    const [direct, general] = lines.map((text) => JSON.parse(text) as Record<string, unknown>);
    expect(Object.keys(direct ?? {})).to.deep.equal(Object.keys(general ?? {}));
    expect({ ...direct, timestamp: 0 }).to.deep.equal({ ...general, timestamp: 0 });
    expect(direct?.audit).to.deep.equal(JSON.parse(json));
  });
});
