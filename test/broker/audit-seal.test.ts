import { expect } from "chai";
import { decodeJwt, generateKeyPair, SignJWT } from "jose";
import { compareStreamIds } from "../../broker/audit/audit-chain.ts";
import { type ExportLine, verifyExport } from "../../broker/audit/audit-export.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, mintLease, operatorHeaders } from "../helpers/flows.ts";

describe("tamper-evident audit: hash chain, signed checkpoints, verify, export", () => {
  let t: TestBroker;
  beforeEach(async () => {
    // One shard keeps the edits below in the shard the checks read; the chain is per shard.
    t = await startTestBroker({
      name: "audit-seal",
      workers: false,
      config: (raw) => {
        Object.assign(raw.redis as object, { shards: 1 });
      },
    });
  });
  afterEach(async () => {
    await t.close();
  });

  const someEvents = async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent);
    await mintLease(t, agent, taskId);
    await t.http.post(`/v1/tasks/${taskId}/complete`).set(agent.headers).expect(200);
    return taskId;
  };
  const verify = async () => (await t.http.get("/v1/audit/verify").set(operatorHeaders(t)).expect(200)).body;
  const shard = () => t.broker.keys.shard(0);
  /** Rebuilds a stream as an attacker would (streams take no insert below their top): same ids, `edit`ed values. */
  const rewrite = async (key: string, edit: (id: string, value: string) => string | undefined) => {
    const entries = await t.redis.xrange(key, "-", "+");
    await t.redis.del(key);
    for (const [id, fields] of entries)
      await t.redis.xadd(key, id, fields[0] ?? "e", edit(id, fields[1] ?? "") ?? fields[1] ?? "");
  };

  it("verifies an intact trail, sealed in several checkpoints, and counts what is not sealed yet", async () => {
    await someEvents();
    expect(await t.broker.sealer.sealAll()).to.be.greaterThan(0);
    await someEvents();
    await t.broker.sealer.sealAll();
    await someEvents();
    const report = await verify();
    expect(report.ok).to.equal(true);
    expect(report.checkpoints).to.equal(2);
    expect(report.unsealed).to.be.greaterThan(0);
    const total = await t.redis.xlen(shard().audit);
    expect(report.events + report.unsealed).to.equal(total);
  });

  it("finds an event edited in Redis, naming the first event of the broken segment", async () => {
    await someEvents();
    await t.broker.sealer.sealAll();
    const sealedUpTo = (await t.redis.hget(shard().auditSeal, "lastId")) as string;
    const taskId = await someEvents();
    await t.broker.sealer.sealAll();
    const entries = await t.redis.xrange(shard().audit, "-", "+");
    const [segmentStart] = entries.find(([id]) => compareStreamIds(id, sealedUpTo) > 0) as [string, string[]];
    // Someone with Redis access rewrites the stream with one record changed, ids kept.
    await rewrite(shard().audit, (_id, json) =>
      json.includes(taskId) && json.includes("task_created")
        ? json.replace("Reconcile the ledger", "Nothing to see")
        : json,
    );
    expect(await verify()).to.include({ ok: false, brokenAt: `${segmentStart}-0` });
  });

  it("finds a deleted event", async () => {
    await someEvents();
    await t.broker.sealer.sealAll();
    const [, second] = await t.redis.xrange(shard().audit, "-", "+");
    await t.redis.xdel(shard().audit, (second as [string, string[]])[0]);
    const report = await verify();
    expect(report.ok).to.equal(false);
    expect(report.reason).to.match(/changed, added or removed|missing/);
  });

  it("does not accept a checkpoint signed by a key no broker published", async () => {
    await someEvents();
    await t.broker.sealer.sealAll();
    const [[checkpointId, fields]] = (await t.redis.xrange(shard().auditCheckpoints, "-", "+")) as [
      [string, string[]],
    ];
    const claims = decodeJwt(fields[1] ?? "");
    const { privateKey } = await generateKeyPair("ES256");
    const forged = await new SignJWT(claims)
      .setProtectedHeader({ alg: "ES256", typ: "jitkey-audit-checkpoint+jwt", kid: "attacker" })
      .sign(privateKey);
    await rewrite(shard().auditCheckpoints, (id) => (id === checkpointId ? forged : undefined));
    const report = await verify();
    expect(report.ok).to.equal(false);
    expect(report.reason).to.include("signature");
  });

  it("exports JSON Lines that verify outside the broker with the published keys, and fail when edited", async () => {
    await someEvents();
    await t.broker.sealer.sealAll();
    const res = await t.http
      .get("/v1/audit/export")
      .set(operatorHeaders(t))
      .buffer(true)
      .parse((r, done) => {
        let text = "";
        r.on("data", (chunk: Buffer) => {
          text += chunk;
        });
        r.on("end", () => done(null, text));
      });
    expect(res.status).to.equal(200);
    const lines = (res.body as string)
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as ExportLine);
    expect(lines[0]?.kind).to.equal("jitkey-audit-export");
    const ok = await verifyExport(lines);
    expect(ok).to.include({ ok: true });
    const tampered = lines.map((line) =>
      line.kind === "event" && line.json.includes("lease_issued")
        ? { ...line, json: line.json.replace('"decision":"allow"', '"decision":"deny"') }
        : line,
    );
    expect((await verifyExport(tampered)).ok).to.equal(false);
  });
});
