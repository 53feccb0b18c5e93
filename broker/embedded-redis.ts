import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { delimiter, join, resolve } from "node:path";
import { Redis } from "ioredis";

/** redis-server is not installed; the message says how to fix it. */
export class RedisServerMissingError extends Error {
  constructor() {
    super(
      "redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install redis-server`, " +
        "macOS: `brew install redis`) or point jitkey at a running Redis with REDIS_URL=redis://host:6379/0.",
    );
    this.name = "RedisServerMissingError";
  }
}

/** A private redis-server child: append-only file under the data directory, loopback only. */
export interface EmbeddedRedis {
  readonly url: string;
  stop(): Promise<void>;
}

/** Finds a free loopback TCP port. */
export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolvePort(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/** Is `command` an executable file in one of the PATH directories? */
export function hasCommand(command: string, path = process.env.PATH ?? ""): boolean {
  return path
    .split(delimiter)
    .filter(Boolean)
    .some((dir) => {
      try {
        accessSync(join(dir, command), constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
}

/**
 * The POSIX sh supervisor that runs redis-server (its arguments) for the broker. It keeps the
 * read end of its stdin, a pipe whose other end only the broker holds, and stops redis-server
 * (SIGTERM, so the AOF is flushed) when that pipe reaches end-of-file: that is, when the broker
 * closes it to stop Redis, or when the broker process is gone, however it ended — `SIGKILL`
 * and crashes included, since the kernel closes a dead process's descriptors. It exits with
 * redis-server's status.
 */
const SUPERVISOR = `
trap 'kill -TERM "$redis" 2>/dev/null' TERM INT HUP
exec 3<&0 0</dev/null
"$@" 3<&- &
redis=$!
(while read -r _; do :; done <&3; kill -TERM "$redis" 2>/dev/null) &
watcher=$!
exec 3<&-
status=0
while kill -0 "$redis" 2>/dev/null; do wait "$redis"; status=$?; done
kill "$watcher" 2>/dev/null
exit "$status"
`;

/**
 * Starts redis-server with AOF on under `<dataDir>/redis`, waits until it answers, and
 * returns its URL. A server left behind by a crashed run (pid file) is stopped first. The
 * server stops with the broker process, even one that is killed (see {@link SUPERVISOR}).
 */
export async function startEmbeddedRedis(
  dataDir: string,
  options: { port?: number } = {},
): Promise<EmbeddedRedis> {
  if (!hasCommand("redis-server")) throw new RedisServerMissingError();
  const dir = join(resolve(dataDir), "redis");
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const pidFile = join(dir, "redis.pid");
  stopStale(pidFile);
  const port = options.port ?? (await freePort());
  const child = spawn(
    "/bin/sh",
    [
      "-c",
      SUPERVISOR,
      "jitkey-redis-supervisor",
      "redis-server",
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--protected-mode",
      "yes",
      "--dir",
      dir,
      "--appendonly",
      "yes",
      "--appendfsync",
      "everysec",
      "--save",
      "",
      "--pidfile",
      pidFile,
      "--daemonize",
      "no",
      "--logfile",
      "",
    ],
    // Its own process group: a Ctrl-C meant for the broker does not stop Redis under it
    // before the broker has drained; the broker stops it last.
    { stdio: ["pipe", "pipe", "pipe"], detached: true },
  );
  let output = "";
  child.stdout?.on("data", (chunk) => {
    output = (output + chunk).slice(-4000);
  });
  child.stderr?.on("data", (chunk) => {
    output = (output + chunk).slice(-4000);
  });
  // The pipe is the watchdog's only signal; a write error on it must not crash the broker.
  child.stdin?.on("error", () => {});
  const url = `redis://127.0.0.1:${port}/0`;
  await waitUntilAnswering(url, child, () => output);
  return {
    url,
    async stop() {
      await stopChild(child);
      await rm(pidFile, { force: true });
    },
  };
}

function stopStale(pidFile: string): void {
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  if (!Number.isInteger(pid) || pid <= 0) return;
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    if (cmdline.includes("redis-server")) process.kill(pid, "SIGTERM");
  } catch {
    // Not running any more.
  }
}

async function waitUntilAnswering(url: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}: ${output()}`);
    const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on("error", () => {});
    try {
      await client.connect();
      await client.ping();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      client.disconnect();
    }
  }
  await stopChild(child);
  throw new Error(`redis-server did not answer within 15 s: ${output()}`);
}

/** Closes the supervisor's pipe (it stops redis-server), then waits; SIGKILLs the group after 5 s. */
async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.stdin?.end();
  const timer = setTimeout(() => {
    if (child.pid) {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }, 5000);
  await exited;
  clearTimeout(timer);
}
