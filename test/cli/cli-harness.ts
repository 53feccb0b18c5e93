import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtemp, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { startTestBroker, type TestBroker, type TestBrokerOptions } from "../helpers/broker.ts";
import type { TestIssuer } from "../helpers/identity.ts";
import { ROOT } from "../helpers/process.ts";

/** The built CLI, as `npm install` would run it. */
export const CLI = join(ROOT, "dist", "cli", "main.js");
/** Scripts the CLI runs as its command in tests. */
export const FIXTURES = join(import.meta.dirname, "fixtures");

let built: Promise<void> | undefined;
/** Builds dist/ once per test run: the CLI is tested as the package ships it. */
export function buildOnce(): Promise<void> {
  built ??= promisify(execFile)("npm", ["run", "build"], { cwd: ROOT }).then(() => undefined);
  return built;
}

/** A test broker reachable over HTTP on a free local port, for CLI processes. */
export interface HttpTestBroker extends TestBroker {
  url: string;
  stopListening(): Promise<void>;
}

export async function startHttpBroker(options: TestBrokerOptions): Promise<HttpTestBroker> {
  const t = await startTestBroker(options);
  const server = createServer(t.app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const stopListening = () => closeServer(server);
  const closeBroker = t.close;
  return Object.assign(t, {
    url,
    stopListening,
    async close(closeOptions?: { keepKeys?: boolean }) {
      if (server.listening) await stopListening();
      await closeBroker(closeOptions);
    },
  });
}

/** Closes a server, dropping idle keep-alive connections so it does not wait for them. */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** A local port nothing listens on. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await closeServer(server);
  return port;
}

/**
 * The environment a CLI process starts with: PATH and HOME only, so the CI variables of
 * whatever runs this suite (GITHUB_ACTIONS, ACTIONS_ID_TOKEN_REQUEST_URL, CI, ...) never leak in.
 */
export function cleanEnv(env: Record<string, string | undefined>): Record<string, string> {
  const base: Record<string, string | undefined> = { PATH: process.env.PATH, HOME: process.env.HOME, ...env };
  return Object.fromEntries(
    Object.entries(base).filter((entry): entry is [string, string] => entry[1] !== undefined),
  );
}

/** A running CLI process and what it printed. */
export interface CliProcess {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with the exit code, or 128+N when the CLI itself died of signal N. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `node dist/cli/main.js ...args` with only `env` (and PATH/HOME) in its environment. */
export function startCli(args: string[], env: Record<string, string | undefined> = {}): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: cleanEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk;
  });
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    err += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("close", (code, signal) => resolve({ code, signal })),
  );
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Runs the CLI to the end. */
export async function cli(
  args: string[],
  env: Record<string, string | undefined> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const run = startCli(args, env);
  const { code } = await run.exited;
  return { code, stdout: run.stdout(), stderr: run.stderr() };
}

/** A task as the operator reads it through the API. */
export async function taskAsOperator(
  t: TestBroker,
  taskId: string,
): Promise<{ id: string; status: string; agentId: string; goal: string }> {
  const res = await t.http
    .get(`/v1/tasks/${taskId}`)
    .set("Authorization", `Bearer ${t.operatorToken}`)
    .expect(200);
  return res.body.task;
}

/** `jitkey run` arguments for one resource, with the identity in a token file. */
export function runArgs(resource: string, tokenFile: string, ...command: string[]): string[] {
  return ["run", "--resource", resource, "--identity-token-file", tokenFile, "--", ...command];
}

/** A fresh temporary directory. */
export function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), "jitkey-cli-"));
}

/** Writes an identity token for `subject` to a file in `dir` and returns the path. */
export async function identityTokenFile(t: TestBroker, dir: string, subject: string): Promise<string> {
  const path = join(dir, `identity-${subject.replace(/[^A-Za-z0-9]/g, "_")}.jwt`);
  await writeFile(path, await t.agentToken(subject));
  return path;
}

/** The payload of a JWT, unverified (the test reads what the broker put in it). */
export function jwtPayload(token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8"));
}

/**
 * A stand-in for the GitHub Actions runner's OIDC token endpoint: checks the bearer request
 * token, signs an identity token for the job with the audience asked for, answers `{value}`.
 */
export class ActionsTokenEndpoint {
  static readonly REQUEST_TOKEN = "gha-request-token-for-tests";
  readonly requests: { authorization?: string; audience: string | null; apiVersion: string | null }[] = [];
  private server: Server | undefined;
  url = "";

  constructor(
    private readonly issuer: TestIssuer,
    private readonly subject: string,
  ) {}

  async start(): Promise<void> {
    this.server = createServer(async (req, res) => {
      const url = new URL(req.url ?? "/", "http://runner");
      const audience = url.searchParams.get("audience");
      this.requests.push({
        authorization: req.headers.authorization,
        audience,
        apiVersion: url.searchParams.get("api-version"),
      });
      if (req.headers.authorization !== `Bearer ${ActionsTokenEndpoint.REQUEST_TOKEN}`) {
        res.writeHead(401, { "Content-Type": "application/json" }).end('{"message":"Bad credentials"}');
        return;
      }
      const value = await this.issuer.token(this.subject, {
        audience: audience ?? "https://github.com/acme",
      });
      res
        .writeHead(200, { "Content-Type": "application/json" })
        .end(JSON.stringify({ count: value.length, value }));
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/_apis/token?api-version=2.0`;
  }

  async stop(): Promise<void> {
    if (this.server) await closeServer(this.server);
  }
}
