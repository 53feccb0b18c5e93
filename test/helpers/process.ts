import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { eventually } from "./redis.ts";

export const ROOT = join(import.meta.dirname, "..", "..");

/** A broker process started from source as `npm start` would, with its output captured. */
export interface BrokerProcess {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Runs `broker/main.ts` with `args`; REDIS_URL and JITKEY_CONFIG are unset unless `env` sets them. */
export function spawnBroker(env: Record<string, string | undefined>, args: string[] = []): BrokerProcess {
  const child = spawn(process.execPath, ["--import", "tsx", "broker/main.ts", ...args], {
    cwd: ROOT,
    env: { ...process.env, REDIS_URL: undefined, JITKEY_CONFIG: undefined, LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return captureOutput(child);
}

/** Collects a child's stdout and stderr as it runs (any command that starts a broker, e.g. `npm start`). */
export function captureOutput(child: ChildProcess): BrokerProcess {
  let out = "";
  let err = "";
  child.stdout?.on("data", (chunk) => {
    out += chunk;
  });
  child.stderr?.on("data", (chunk) => {
    err += chunk;
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Waits for the "jitkey started" log line and returns what it says. */
export function waitForStart(
  broker: BrokerProcess,
  timeoutMs = 30_000,
): Promise<{ url: string; devMode: boolean }> {
  return eventually(async () => {
    if (broker.child.exitCode !== null) throw new Error(`broker exited: ${broker.stderr()}`);
    const line = broker
      .stdout()
      .split("\n")
      .find((l) => l.includes('"jitkey started"'));
    return line ? (JSON.parse(line) as { url: string; devMode: boolean }) : undefined;
  }, timeoutMs);
}

/** The operator token dev mode prints once on stderr. */
export function devOperatorToken(broker: BrokerProcess): string | undefined {
  return /Operator token[^:]*:\s+(\S+)/.exec(broker.stderr())?.[1];
}

/**
 * Waits for dev mode's operator token: it is printed on stderr just after the "jitkey
 * started" line on stdout, and the two pipes keep no order between them.
 */
export function waitForDevOperatorToken(broker: BrokerProcess, timeoutMs = 5000): Promise<string> {
  return eventually(async () => devOperatorToken(broker), timeoutMs);
}
