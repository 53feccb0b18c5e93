import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { TestBroker } from "./broker.ts";
import { testRedisUrl } from "./redis.ts";

const SCRIPT = fileURLToPath(new URL("./worker-process.ts", import.meta.url));

/** A broker child process (see worker-process.ts) and the lines it printed. */
export class ChildBroker {
  readonly lines: string[] = [];
  stderr = "";
  readonly #exited: Promise<number | null>;

  private constructor(readonly child: ChildProcess) {
    let buffer = "";
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      buffer += chunk;
      const parts = buffer.split("\n");
      buffer = parts.pop() ?? "";
      this.lines.push(...parts);
    });
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr = (this.stderr + chunk).slice(-8000);
    });
    this.#exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  }

  /** Starts worker-process.ts over the same Redis prefix and config as `t`. */
  static start(t: TestBroker, env: Record<string, string>): ChildBroker {
    const child = spawn(process.execPath, ["--import", "tsx", SCRIPT], {
      env: {
        ...process.env,
        REDIS_URL: testRedisUrl(),
        JITKEY_CHILD_CONFIG: JSON.stringify(t.config),
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    return new ChildBroker(child);
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Waits for a stdout line matching `pattern`; fails after `timeoutMs` or if the child exits. */
  async waitForLine(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      for (const line of this.lines) {
        const match = line.match(pattern);
        if (match) return match;
      }
      if (!this.running) break;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    throw new Error(
      `child printed no line matching ${pattern} (running: ${this.running}); stdout: ${this.lines.join(" | ")}; stderr: ${this.stderr}`,
    );
  }

  /** SIGKILL: no shutdown hooks, no lock release, like a crashed host. Waits for the exit. */
  async kill(): Promise<void> {
    if (this.running) this.child.kill("SIGKILL");
    await this.#exited;
  }
}
