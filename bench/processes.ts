import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, createWriteStream, openSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";

/** The repository root: bench/ sits directly under it. */
export const ROOT = join(import.meta.dirname, "..");

/**
 * Runs `fn` until it returns a value other than undefined, or throws after `timeoutMs`.
 * An error from `fn` ends the wait: callers turn expected failures (connection refused) into
 * undefined themselves.
 */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  timeoutMs: number,
  intervalMs = 20,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** A port nothing listens on right now (bound once on 127.0.0.1, then released). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (!address || typeof address !== "object") throw new Error("could not find a free port");
  return address.port;
}

/** A child process of the benchmark, its output in a log file under the run's directory. */
export interface BenchProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly logFile: string;
  readonly exited: Promise<number | null>;
}

/**
 * Every process and file one benchmark run creates, so that one call (also on Ctrl-C or a
 * crash) stops the processes and removes the directory.
 */
export class BenchRun {
  readonly #processes = new Set<BenchProcess>();
  #logCount = 0;

  private constructor(readonly dir: string) {}

  static async create(): Promise<BenchRun> {
    return new BenchRun(await mkdtemp(join(tmpdir(), "jitkey-bench-")));
  }

  /**
   * Starts `command`; stdout and stderr go to `<dir>/<name>-<n>.log`, written by the child
   * itself (this process is not in the path of a broker's log lines, whose cost would
   * otherwise land on the machine twice), unless `capture` asks for stdout here too. With
   * `ipc` the child gets a message channel (`process.send`), as `fork` would give it.
   */
  spawn(
    name: string,
    command: string,
    args: string[],
    env: Record<string, string> = {},
    options: { ipc?: boolean; capture?: boolean } = {},
  ): BenchProcess {
    const logFile = join(this.dir, `${name}-${++this.#logCount}.log`);
    const fd = openSync(logFile, "a");
    const output = options.capture ? "pipe" : fd;
    const child = spawn(command, args, {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: options.ipc ? ["ignore", output, fd, "ipc"] : ["ignore", output, fd],
    });
    closeSync(fd);
    const log = options.capture ? createWriteStream(logFile, { flags: "a" }) : undefined;
    if (log) child.stdout?.pipe(log, { end: false });
    const exited = new Promise<number | null>((resolve) => {
      child.once("exit", (code) => {
        this.#processes.delete(entry);
        resolve(code);
      });
      child.once("error", (error) => {
        createWriteStream(logFile, { flags: "a" }).end(`spawn failed: ${error.message}\n`);
        this.#processes.delete(entry);
        resolve(-1);
      });
    });
    const entry: BenchProcess = { name, child, logFile, exited };
    this.#processes.add(entry);
    return entry;
  }

  /** Runs a child to completion and returns the JSON object on its last stdout line. */
  async runJson<T>(
    name: string,
    command: string,
    args: string[],
    env: Record<string, string> = {},
  ): Promise<T> {
    const proc = this.spawn(name, command, args, env, { capture: true });
    let out = "";
    proc.child.stdout?.on("data", (chunk: Buffer) => {
      out += chunk.toString();
    });
    const code = await proc.exited;
    if (code !== 0) throw new Error(`${name} exited with ${code}:\n${await tail(proc.logFile)}`);
    const last = out.trim().split("\n").at(-1) ?? "";
    return JSON.parse(last) as T;
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  async stop(proc: BenchProcess, graceMs = 10_000): Promise<void> {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
    proc.child.kill("SIGTERM");
    const timer = setTimeout(() => proc.child.kill("SIGKILL"), graceMs);
    await proc.exited;
    clearTimeout(timer);
  }

  /** Stops every process still running and, unless `keep`, removes the run's directory. */
  async close(keep = false): Promise<void> {
    await Promise.all([...this.#processes].map((proc) => this.stop(proc, 5_000)));
    if (!keep) await rm(this.dir, { recursive: true, force: true });
  }

  /** Kills what is left at once; for `process.on("exit")`, which cannot wait. */
  killAll(): void {
    for (const proc of this.#processes) proc.child.kill("SIGKILL");
  }
}

/** The last lines of a log file, to say why a process failed. */
export async function tail(file: string, lines = 20): Promise<string> {
  const text = await readFile(file, "utf8").catch(() => "");
  return text.trim().split("\n").slice(-lines).join("\n");
}

/** The benchmark's own redis-server: a free port, no persistence, no memory limit. */
export interface BenchRedis {
  readonly url: string;
  readonly client: Redis;
  readonly process: BenchProcess;
  /** `INFO memory` used_memory, in bytes. */
  usedMemory(): Promise<number>;
}

export async function startRedis(run: BenchRun): Promise<BenchRedis> {
  const port = await freePort();
  const proc = run.spawn("redis", "redis-server", [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    run.dir,
    "--maxmemory",
    "0",
  ]);
  const url = `redis://127.0.0.1:${port}/0`;
  await waitFor(
    "redis-server",
    async () => {
      // No pid: the binary could not be started at all (not on the PATH).
      if (proc.child.exitCode !== null || proc.child.pid === undefined)
        throw new Error(`redis-server did not start (is it on the PATH?):\n${await tail(proc.logFile)}`);
      const log = await readFile(proc.logFile, "utf8").catch(() => "");
      return log.includes("Ready to accept connections") ? true : undefined;
    },
    10_000,
  );
  const client = new Redis(url, { maxRetriesPerRequest: 1 });
  // Failed commands reject on their own; the event would only repeat that, or report the
  // server going away while the run is being torn down.
  client.on("error", () => undefined);
  return {
    url,
    client,
    process: proc,
    async usedMemory() {
      const info = await client.info("memory");
      const match = /^used_memory:(\d+)/m.exec(info);
      if (!match?.[1]) throw new Error("INFO memory has no used_memory");
      return Number(match[1]);
    },
  };
}
