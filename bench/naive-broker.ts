/**
 * The deliberately naive reference broker that `npm run bench` measures jitkey against, in
 * the same run, on the same machine, Redis and load. Express 5 + jose + ioredis + BullMQ and
 * nothing else: verify the agent JWT, read the task, write the lease hash, add one delayed
 * BullMQ job, sign the credential. No policy, no audit, no metrics, no rate limits, no
 * indexes. Introspection verifies the credential JWT and reads the lease hash.
 *
 * It reads the same config file as jitkey (`JITKEY_CONFIG`: identity issuers, operators,
 * the first resource) and serves the same route shapes, so one load script drives both.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { Queue, Worker } from "bullmq";
import express, { type NextFunction, type Request, type Response } from "express";
import { Redis } from "ioredis";
import { createLocalJWKSet, exportJWK, generateKeyPair, type JSONWebKeySet, jwtVerify, SignJWT } from "jose";

interface NaiveConfig {
  http: { port: number; host?: string };
  redis: { url: string };
  identity: {
    audience: string;
    maxTokenAgeSeconds?: number;
    issuers: { name: string; issuer: string; jwks: JSONWebKeySet }[];
  };
  operators: { tokenSha256: string }[];
  resources: { name: string; scopes: string[]; maxTtlSeconds: number; options: { audience: string } }[];
}

const config = JSON.parse(readFileSync(process.env.JITKEY_CONFIG ?? "", "utf8")) as NaiveConfig;
const port = Number(process.env.PORT ?? config.http.port);
const issuerUrl = `http://127.0.0.1:${port}`;
const resource = config.resources[0] as NaiveConfig["resources"][number];
const redis = new Redis(config.redis.url);
const queueConnection = new Redis(config.redis.url, { maxRetriesPerRequest: null });
const queue = new Queue("naive-revoke", { connection: queueConnection, prefix: "naive" });
const worker = new Worker(
  "naive-revoke",
  async (job) => {
    await redis.hset(
      `naive:lease:${job.data.leaseId}`,
      "status",
      "revoked",
      "revokedAt",
      new Date().toISOString(),
    );
  },
  { connection: queueConnection.duplicate(), prefix: "naive", concurrency: 8 },
);
const issuers = new Map(
  config.identity.issuers.map((i) => [i.issuer, { ...i, keys: createLocalJWKSet(i.jwks) }]),
);
const operatorHashes = config.operators.map((o) => Buffer.from(o.tokenSha256, "hex"));
const { privateKey, publicKey } = await generateKeyPair("ES256");
const ownKeys = createLocalJWKSet({
  keys: [{ ...(await exportJWK(publicKey)), kid: "naive", alg: "ES256" }],
});

class HttpError extends Error {
  constructor(readonly status: number) {
    super(String(status));
  }
}

function bearer(req: Request): string {
  const token = /^Bearer (\S+)$/.exec(req.get("authorization") ?? "")?.[1];
  if (!token) throw new HttpError(401);
  return token;
}

async function verifyAgent(req: Request): Promise<string> {
  const token = bearer(req);
  const [, body] = token.split(".");
  const iss = JSON.parse(Buffer.from(body ?? "", "base64url").toString() || "{}").iss;
  const issuer = issuers.get(iss);
  if (!issuer) throw new HttpError(401);
  const { payload } = await jwtVerify(token, issuer.keys, {
    issuer: issuer.issuer,
    audience: config.identity.audience,
    algorithms: ["ES256", "RS256", "EdDSA"],
    maxTokenAge: config.identity.maxTokenAgeSeconds ?? 3600,
    requiredClaims: ["exp", "iat"],
  }).catch(() => {
    throw new HttpError(401);
  });
  return `${issuer.name}:${payload.sub}`;
}

function verifyOperator(req: Request): void {
  const hash = createHash("sha256").update(bearer(req)).digest();
  if (!operatorHashes.some((known) => timingSafeEqual(known, hash))) throw new HttpError(401);
}

const app = express();
app.use(express.json({ limit: "64kb" }));
app.use(express.urlencoded({ extended: false, limit: "64kb" }));

app.post("/v1/tasks", async (req, res) => {
  const agentId = await verifyAgent(req);
  const id = `tsk_${randomBytes(16).toString("base64url")}`;
  const expiresAt = new Date(Date.now() + (req.body.ttlSeconds ?? 3600) * 1000).toISOString();
  await redis.hset(`naive:task:${id}`, { agentId, status: "approved", expiresAt });
  res.status(201).json({ task: { id, agentId, status: "approved", expiresAt } });
});

app.post("/v1/tasks/:id/leases", async (req, res) => {
  const agentId = await verifyAgent(req);
  const taskId = req.params.id as string;
  const task = await redis.hgetall(`naive:task:${taskId}`);
  if (!task.agentId) throw new HttpError(404);
  if (task.agentId !== agentId) throw new HttpError(403);
  if (task.status !== "approved" || Date.parse(task.expiresAt ?? "") <= Date.now()) throw new HttpError(409);
  const id = `lse_${randomBytes(16).toString("base64url")}`;
  const ttlSeconds = Math.min(req.body.ttlSeconds ?? 300, resource.maxTtlSeconds);
  const expiresAt = Math.floor(Date.now() / 1000) + ttlSeconds;
  const lease = {
    id,
    taskId,
    agentId,
    resource: resource.name,
    scopes: resource.scopes.join(" "),
    expiresAt: new Date(expiresAt * 1000).toISOString(),
    status: "active",
  };
  await redis.hset(`naive:lease:${id}`, lease);
  await queue.add("revoke", { leaseId: id }, { jobId: id, delay: ttlSeconds * 1000, removeOnComplete: true });
  const token = await new SignJWT({ task_id: taskId, scope: lease.scopes })
    .setProtectedHeader({ alg: "ES256", kid: "naive", typ: "at+jwt" })
    .setIssuer(issuerUrl)
    .setAudience(resource.options.audience)
    .setSubject(agentId)
    .setJti(id)
    .setIssuedAt()
    .setExpirationTime(expiresAt)
    .sign(privateKey);
  res.status(201).json({ lease, credential: { type: "bearer", token, expiresAt: lease.expiresAt } });
});

app.post("/v1/introspect", async (req, res) => {
  verifyOperator(req);
  const verified = await jwtVerify(String(req.body.token ?? ""), ownKeys, { issuer: issuerUrl }).catch(
    () => undefined,
  );
  const lease = verified?.payload.jti ? await redis.hgetall(`naive:lease:${verified.payload.jti}`) : {};
  if (lease.status !== "active" || Date.parse(lease.expiresAt ?? "") <= Date.now()) {
    res.json({ active: false });
    return;
  }
  const { sub, aud, iss, exp, iat, jti } = verified?.payload ?? {};
  res.json({ active: true, scope: lease.scopes, client_id: lease.agentId, sub, aud, iss, exp, iat, jti });
});

app.get("/readyz", async (_req, res) => {
  res.json({ status: (await redis.ping()) === "PONG" ? "ready" : "not_ready" });
});

app.use((error: unknown, _req: Request, res: Response, _next: NextFunction) => {
  res.status(error instanceof HttpError ? error.status : 500).json({ error: { code: String(error) } });
});

const server = app.listen(port, config.http.host ?? "127.0.0.1");
process.on("SIGTERM", async () => {
  server.close();
  await worker.close();
  await queue.close();
  redis.disconnect();
  queueConnection.disconnect();
  process.exit(0);
});
