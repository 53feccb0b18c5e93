#!/usr/bin/env node
import { realpathSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { fileURLToPath } from "node:url";
import { createApp } from "./app.ts";
import { createBroker } from "./broker.ts";
import { type Config, ConfigError, configPath, loadConfigFile, publicUrl } from "./config.ts";
import { type DevModeSecrets, prepareDevMode } from "./dev-mode.ts";
import { type EmbeddedRedis, RedisServerMissingError, startEmbeddedRedis } from "./embedded-redis.ts";
import { createLogger } from "./logger.ts";
import { hasRedisTarget } from "./redis.ts";

const MODES = ["all", "serve", "worker"] as const;
type Mode = (typeof MODES)[number];

/**
 * Entry point: `jitkey` (API + workers, the default of `npm start`), `jitkey serve` (API
 * only) or `jitkey worker` (revocation workers only). Loads config, builds the broker,
 * listens, and shuts down gracefully on SIGINT/SIGTERM.
 */
async function main(argv: string[]): Promise<void> {
  const mode = (argv[0] ?? "all") as Mode;
  if (!MODES.includes(mode)) {
    process.stderr.write(`usage: jitkey [serve|worker]\n  (no argument: API and workers in one process)\n`);
    process.exit(2);
  }
  let config: Config;
  let dev: DevModeSecrets | undefined;
  try {
    const loaded = await loadConfigFile();
    if (loaded) config = loaded;
    else ({ config, dev } = await prepareDevMode());
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`jitkey: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
  const logger = createLogger({ level: config.log.level });

  let embedded: EmbeddedRedis | undefined;
  if (!hasRedisTarget(config.redis)) {
    if (mode !== "all") {
      process.stderr.write(
        `jitkey ${mode}: set redis.url (or REDIS_URL), redis.cluster or redis.sentinel; a private Redis is only started by \`jitkey\` (npm start)\n`,
      );
      process.exit(1);
    }
    try {
      embedded = await startEmbeddedRedis(config.data.dir);
    } catch (error) {
      process.stderr.write(`jitkey: ${(error as Error).message}\n`);
      process.exit(error instanceof RedisServerMissingError ? 3 : 1);
    }
    config = { ...config, redis: { ...config.redis, url: embedded.url } };
    logger.info("started private redis-server", { url: embedded.url, dir: config.data.dir });
  }

  let server: Server | undefined;
  let port = config.http.port;
  if (mode !== "worker") {
    // Until the app is attached, answer rather than hang: the port is bound before Redis is reached.
    server = createServer((_req, res) => {
      res.writeHead(503, { "Content-Type": "application/json", "Retry-After": "1" });
      res.end(JSON.stringify({ error: { code: "unavailable", message: "starting" } }));
    });
    await new Promise<void>((resolve, reject) => {
      server?.once("error", reject);
      server?.listen(config.http.port, config.http.host, () => resolve());
    });
    const address = server.address();
    if (address && typeof address === "object") port = address.port;
  }
  const issuer = publicUrl(config, port);
  const broker = await createBroker(config, {
    logger,
    issuer,
    dev,
    configPath: configPath(),
  });
  if (server) {
    server.removeAllListeners("request");
    server.on("request", createApp(broker));
  }
  if (mode !== "serve") await broker.startWorkers();
  // Policy changes apply without a restart: SIGHUP, or an edit of the config or a policy file.
  if (mode !== "worker") await broker.policyStore.watch();
  logger.info("jitkey started", { mode, url: server ? issuer : undefined, devMode: config.devMode });
  if (dev) announceDevMode(issuer, dev);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info("shutting down", { signal });
    const force = setTimeout(() => process.exit(1), 20_000);
    force.unref();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server?.closeAllConnections();
    await broker.close();
    await embedded?.stop();
    logger.info("stopped");
    process.exit(0);
  };
  // npm runs the start script as `sh -c "exec node ..."` so this process, not a shell, is what
  // npm's forwarded SIGTERM reaches. SIGHUP: the terminal went away.
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const)
    process.on(signal, () => void shutdown(signal));
}

/** Dev mode says so loudly, once, on the terminal (not in the structured log). */
function announceDevMode(url: string, dev: DevModeSecrets): void {
  const line = "=".repeat(78);
  process.stderr.write(
    [
      line,
      "  jitkey is running in DEV MODE: no JITKEY_CONFIG was given.",
      "  Bound to 127.0.0.1 only. Demo resource `demo-api`, dev identity issuer `dev`.",
      "  Never use dev mode for real credentials.",
      "",
      `  Operator token (shown once, new on every start):  ${dev.operatorToken}`,
      "",
      "  Get a dev agent identity token:",
      `    curl -s -X POST ${url}/v1/dev/agent-token -H "Authorization: Bearer $OPERATOR" \\`,
      `         -H 'Content-Type: application/json' -d '{"agent":"demo-agent"}'`,
      line,
      "",
    ].join("\n"),
  );
}

/**
 * Runs a server command (`[]`, `["serve"]`, `["worker"]`); exits 1 when it cannot start.
 * The `jitkey` dispatcher (cli/main.ts) calls it; so does running this file directly.
 */
export function runServer(argv: string[]): void {
  main(argv).catch((error) => {
    const what = error instanceof ConfigError ? "invalid configuration" : "failed to start";
    process.stderr.write(`jitkey: ${what}: ${(error as Error).message}\n`);
    process.exit(1);
  });
}

/** True when node was started on this file (npm start), false when it is imported. */
function isEntryPoint(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

if (isEntryPoint()) runServer(process.argv.slice(2));
