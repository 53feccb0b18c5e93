import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Redis, type RedisOptions } from "ioredis";
import { eventually } from "./redis.ts";

const run = promisify(execFile);

/** One redis-server child, its port and what it printed last. */
interface ServerProcess {
  readonly port: number;
  readonly child: ChildProcess;
  output(): string;
}

/** `count` distinct free loopback ports, all held open together while they are picked. */
async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = createServer();
      servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => resolve());
      });
    }
    return servers.map((server) => (server.address() as { port: number }).port);
  } finally {
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  }
}

/** Every server still running, so a test run that ends abruptly leaves none behind. */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** Starts `redis-server` with `args` in `dir`, loopback only, no persistence, in the foreground. */
function startServer(port: number, dir: string, args: string[]): ServerProcess {
  const child = spawn(
    "redis-server",
    [
      ...args,
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--dir",
      dir,
      "--save",
      "",
      "--appendonly",
      "no",
      "--daemonize",
      "no",
      "--logfile",
      "",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  running.add(child);
  child.once("exit", () => running.delete(child));
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-4000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  return { port, child, output: () => output };
}

/** Waits until the server answers PING (over `url` with `options`, default plain TCP), or fails with what it printed. */
async function waitForPing(server: ServerProcess, url?: string, options: RedisOptions = {}): Promise<void> {
  await eventually(async () => {
    if (server.child.exitCode !== null) throw new Error(`redis-server exited: ${server.output()}`);
    const client = new Redis(url ?? `redis://127.0.0.1:${server.port}`, {
      ...options,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    client.on("error", () => {});
    try {
      await client.connect();
      return (await client.ping()) === "PONG";
    } finally {
      client.disconnect();
    }
  }, 15_000);
}

async function stopServers(servers: readonly ServerProcess[]): Promise<void> {
  await Promise.all(
    servers.map(async ({ child }) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }),
  );
}

/** Stops the servers and removes their directory. */
async function removeAll(servers: readonly ServerProcess[], root: string): Promise<void> {
  await stopServers(servers);
  await rm(root, { recursive: true, force: true });
}

/** A throwaway Redis Cluster of masters on loopback ports. */
export interface LocalRedisCluster {
  /** `redis://127.0.0.1:<port>` of every master, the form `redis.cluster.nodes` takes. */
  readonly nodes: readonly string[];
  readonly ports: readonly number[];
  /** A plain client to one master (for per-node assertions). Close it yourself. */
  nodeClient(port: number): Redis;
  /** Sends `signal` to the master on `port` (SIGKILL: a crashed node; SIGSTOP: a hung one). */
  signal(port: number, signal: NodeJS.Signals): void;
  /** Stops every server and removes their directories. */
  stop(): Promise<void>;
}

/**
 * Starts `masters` `redis-server --cluster-enabled yes` processes on free ports, each in its
 * own temporary directory with no persistence, joins them with `redis-cli --cluster create`
 * (slots split evenly, no replicas) and waits until every node says `cluster_state:ok`.
 */
export async function startRedisCluster(masters = 3): Promise<LocalRedisCluster> {
  const root = await mkdtemp(join(tmpdir(), "jitkey-test-cluster-"));
  const servers: ServerProcess[] = [];
  try {
    const ports = await freePorts(masters * 2);
    for (let i = 0; i < masters; i++) {
      const dir = join(root, `node-${i}`);
      await mkdir(dir);
      const [port, busPort] = [ports[2 * i] as number, ports[2 * i + 1] as number];
      servers.push(
        startServer(port, dir, [
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          join(dir, "nodes.conf"),
          "--cluster-port",
          String(busPort),
          "--cluster-node-timeout",
          "2000",
        ]),
      );
    }
    await Promise.all(servers.map((server) => waitForPing(server)));
    await run(
      "redis-cli",
      [
        "--cluster",
        "create",
        ...servers.map((s) => `127.0.0.1:${s.port}`),
        "--cluster-replicas",
        "0",
        "--cluster-yes",
      ],
      { timeout: 30_000 },
    );
    await Promise.all(
      servers.map((server) =>
        eventually(async () => {
          const client = new Redis(server.port, "127.0.0.1", { maxRetriesPerRequest: 1 });
          try {
            const info = await client.cluster("INFO");
            return String(info).includes("cluster_state:ok");
          } finally {
            client.disconnect();
          }
        }, 20_000),
      ),
    );
  } catch (error) {
    await removeAll(servers, root);
    throw error;
  }
  return {
    nodes: servers.map((s) => `redis://127.0.0.1:${s.port}`),
    ports: servers.map((s) => s.port),
    nodeClient: (port) => new Redis(port, "127.0.0.1", { maxRetriesPerRequest: 1 }),
    signal(port, signal) {
      servers.find((server) => server.port === port)?.child.kill(signal);
    },
    async stop() {
      for (const { child } of servers) child.kill("SIGCONT");
      await removeAll(servers, root);
    },
  };
}

/** A throwaway Redis master watched by one Sentinel. */
export interface LocalRedisSentinel {
  /** The master's name as the sentinel knows it. */
  readonly name: string;
  readonly sentinel: { host: string; port: number };
  readonly masterPort: number;
  /** A plain client to the master. Close it yourself. */
  masterClient(): Redis;
  /** Sends `signal` to the master (SIGSTOP: a hung master; SIGCONT: it is back). */
  signalMaster(signal: NodeJS.Signals): void;
  stop(): Promise<void>;
}

/**
 * Starts one `redis-server` master and one Sentinel (`redis-server <conf> --sentinel`)
 * monitoring it as `name`, each in a temporary directory, and waits until the sentinel
 * names the master.
 */
export async function startRedisSentinel(name = "jitkey-test"): Promise<LocalRedisSentinel> {
  const root = await mkdtemp(join(tmpdir(), "jitkey-test-sentinel-"));
  const servers: ServerProcess[] = [];
  try {
    const [masterPort, sentinelPort] = (await freePorts(2)) as [number, number];
    const master = startServer(masterPort, root, []);
    servers.push(master);
    await waitForPing(master);
    // Sentinel rewrites its config file, so it must be a writable file of its own.
    const conf = join(root, "sentinel.conf");
    await writeFile(
      conf,
      [
        `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`,
        `sentinel down-after-milliseconds ${name} 5000`,
        "",
      ].join("\n"),
    );
    const sentinel = startServer(sentinelPort, root, [conf, "--sentinel"]);
    servers.push(sentinel);
    await waitForPing(sentinel);
    await eventually(async () => {
      const client = new Redis(sentinelPort, "127.0.0.1", { maxRetriesPerRequest: 1 });
      try {
        const address = (await client.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)) as string[] | null;
        return address?.[1] === String(masterPort);
      } finally {
        client.disconnect();
      }
    }, 15_000);
    return {
      name,
      sentinel: { host: "127.0.0.1", port: sentinelPort },
      masterPort,
      masterClient: () => new Redis(masterPort, "127.0.0.1", { maxRetriesPerRequest: 1 }),
      signalMaster: (signal) => master.child.kill(signal),
      async stop() {
        master.child.kill("SIGCONT");
        await removeAll(servers, root);
      },
    };
  } catch (error) {
    await removeAll(servers, root);
    throw error;
  }
}

/** A throwaway Redis that speaks only TLS and admits one ACL user. */
export interface LocalRedisTls {
  /** `rediss://127.0.0.1:<port>/0`, without credentials. */
  readonly url: string;
  /** The PEM file of the CA that signed the server's certificate (for `redis.tls.caFile`). */
  readonly caFile: string;
  /** A PEM file of another CA, which did not. */
  readonly otherCaFile: string;
  stop(): Promise<void>;
}

/**
 * Makes a CA and a server certificate for 127.0.0.1 with `openssl`, then starts a
 * `redis-server` with only a TLS port whose one user is `username`/`password` (the default
 * user is off).
 */
export async function startRedisTls(username: string, password: string): Promise<LocalRedisTls> {
  const root = await mkdtemp(join(tmpdir(), "jitkey-test-tls-"));
  const servers: ServerProcess[] = [];
  try {
    const file = (name: string) => join(root, name);
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    for (const ca of ["ca", "other-ca"])
      await run("openssl", [
        "req",
        "-x509",
        ...ec,
        "-keyout",
        file(`${ca}.key`),
        "-out",
        file(`${ca}.crt`),
        "-days",
        "1",
        "-subj",
        `/CN=jitkey test ${ca}`,
      ]);
    await run("openssl", [
      "req",
      ...ec,
      "-keyout",
      file("server.key"),
      "-out",
      file("server.csr"),
      "-subj",
      "/CN=localhost",
    ]);
    await writeFile(file("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
    await run("openssl", [
      "x509",
      "-req",
      "-in",
      file("server.csr"),
      "-CA",
      file("ca.crt"),
      "-CAkey",
      file("ca.key"),
      "-CAcreateserial",
      "-out",
      file("server.crt"),
      "-days",
      "1",
      "-extfile",
      file("ext.cnf"),
    ]);
    const [port] = (await freePorts(1)) as [number];
    const server = startServer(0, root, [
      "--tls-port",
      String(port),
      "--tls-cert-file",
      file("server.crt"),
      "--tls-key-file",
      file("server.key"),
      "--tls-ca-cert-file",
      file("ca.crt"),
      "--tls-auth-clients",
      "no",
      // One user, and the default user off: a login is required.
      "--user",
      "default",
      "off",
      "--user",
      username,
      "on",
      `>${password}`,
      "~*",
      "&*",
      "+@all",
    ]);
    servers.push(server);
    const ca = await readFile(file("ca.crt"), "utf8");
    await waitForPing(server, `rediss://127.0.0.1:${port}/0`, { username, password, tls: { ca } });
    return {
      url: `rediss://127.0.0.1:${port}/0`,
      caFile: file("ca.crt"),
      otherCaFile: file("other-ca.crt"),
      async stop() {
        await removeAll(servers, root);
      },
    };
  } catch (error) {
    await removeAll(servers, root);
    throw error;
  }
}
