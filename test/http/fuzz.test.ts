import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { brotliCompressSync, gzipSync } from "node:zlib";
import { expect } from "chai";
import fc from "fast-check";
import { ROUTES } from "../../broker/http/openapi.ts";
import { OAUTH_ERROR_CODES } from "../../broker/oauth/oauth-error.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { CONTRACT_ERROR_CODES } from "../helpers/contract.ts";
import { eventually } from "../helpers/redis.ts";

/** A header value as raw bytes on the wire: UTF-8 sent as is, minus what HTTP forbids. */
function asHeaderBytes(value: string): string {
  return Buffer.from(value.replace(/[\0\r\n]/g, ""), "utf8").toString("latin1");
}

interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Uint8Array | string | undefined;
}

describe("fuzz: random requests to every route never get a 5xx", () => {
  let t: TestBroker;
  let server: Server;
  let base: string;
  const known = { tasks: [] as string[], leases: [] as string[], credentials: [] as string[] };
  let agentToken: string;
  let otherAgentToken: string;

  before(async () => {
    t = await startTestBroker({ name: "fuzz" });
    server = createServer(t.app).listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    agentToken = await t.agentToken("agent-fuzz");
    otherAgentToken = await t.agentToken("agent-other");
    // Real state for the fuzzer to aim at: approved tasks with leases.
    for (let i = 0; i < 3; i++) {
      const created = await t.http
        .post("/v1/tasks")
        .set("Authorization", `Bearer ${agentToken}`)
        .send({ goal: "fuzz target", resources: [{ resource: "records", scopes: ["read"] }] })
        .expect(201);
      const id = created.body.task.id as string;
      await t.http.post(`/v1/tasks/${id}/approve`).set("Authorization", `Bearer ${t.operatorToken}`).send({});
      const minted = await t.http
        .post(`/v1/tasks/${id}/leases`)
        .set("Authorization", `Bearer ${agentToken}`)
        .send({ resource: "records" })
        .expect(201);
      known.tasks.push(id);
      known.leases.push(minted.body.lease.id);
      known.credentials.push(minted.body.credential.password);
    }
  });
  after(async () => {
    server.close();
    await t.close();
  });

  /** Random requests, built once the known tasks, leases and credentials exist. */
  function requests(): fc.Arbitrary<FuzzRequest> {
    const text = fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.string({ unit: "grapheme", maxLength: 40 }),
      fc.constantFrom(
        "",
        " ",
        "\u0000",
        "\u202E",
        "%",
        "%zz",
        "..",
        "../../x",
        "tsk_",
        "lse_",
        "a".repeat(5000),
      ),
    );
    const id = fc.oneof(
      fc.constantFrom(...known.tasks, ...known.leases, "tsk_missing", "lse_missing"),
      fc.constant("TASK"),
      fc.constant("LEASE"),
      text.map((s) => encodeURIComponent(s)),
      fc.constantFrom("%E0%A4%A", "%", "tsk_%00", `tsk_${"x".repeat(8000)}`),
    );
    const path = fc
      .tuple(
        fc.oneof(
          { weight: 8, arbitrary: fc.constantFrom(...ROUTES.map((route) => route.path)) },
          {
            weight: 1,
            arbitrary: fc.constantFrom("/", "/v1", "/v1/", "/v1/tasks/", "/v2/tasks", "/v1/dev/agent-token"),
          },
        ),
        id,
        fc.dictionary(
          fc.oneof(
            fc.constantFrom(
              "status",
              "taskId",
              "agentId",
              "leaseId",
              "after",
              "limit",
              "resource",
              "waitSeconds",
            ),
            fc.string({ maxLength: 8 }),
          ),
          text,
          { maxKeys: 3 },
        ),
      )
      .map(([template, value, query]) => {
        const filled = template.replace(
          "{id}",
          value === "TASK" ? (known.tasks[0] ?? "") : value === "LEASE" ? (known.leases[0] ?? "") : value,
        );
        const search = new URLSearchParams(query).toString();
        return search ? `${filled}?${search}` : filled;
      });
    const authorization = fc.oneof(
      fc.constant(undefined),
      fc.constant("OPERATOR"),
      fc.constant("AGENT"),
      fc.constant("OTHER_AGENT"),
      fc.constant("INTROSPECTOR"),
      text.map((s) => `Bearer ${s}`),
      fc.constantFrom(
        "Bearer",
        "Basic abc",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.",
        `Bearer ${"A".repeat(12_000)}.B.C`,
      ),
    );
    const body = fc.oneof(
      fc.constant(undefined),
      fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value)),
      fc
        .record(
          {
            goal: text,
            resources: fc.array(
              fc.record({
                resource: fc.constantFrom("demo-api", "records", "nope"),
                scopes: fc.array(text, { maxLength: 3 }),
              }),
              { maxLength: 3 },
            ),
            ttlSeconds: fc.oneof(fc.integer(), fc.double(), fc.string()),
            resource: fc.constantFrom("demo-api", "records"),
            token: fc.oneof(text, fc.constantFrom(...known.credentials)),
            reason: text,
            note: text,
            all: fc.oneof(fc.boolean(), fc.constant("true")),
            leaseId: id,
            taskId: id,
          },
          { requiredKeys: [] },
        )
        .map((value) => JSON.stringify(value)),
      fc.uint8Array({ maxLength: 200 }),
      text,
    );
    return fc
      .record({
        method: fc.constantFrom("GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"),
        path,
        authorization,
        contentType: fc.constantFrom(
          undefined,
          "application/json",
          "application/x-www-form-urlencoded",
          "text/plain",
          "application/json; charset=utf-8",
          "application/json; charset=latin1",
          "application/json; charset=nope",
          "multipart/form-data; boundary=x",
          "garbage",
        ),
        encoding: fc.constantFrom(
          undefined,
          undefined,
          "gzip",
          "br",
          "deflate",
          "identity",
          "compress",
          "gzip, gzip",
        ),
        compress: fc.boolean(),
        forwardedFor: fc.option(fc.ipV4(), { nil: undefined }),
        body,
      })
      .map((r): FuzzRequest => {
        const headers: Record<string, string> = {};
        const tokens: Record<string, string> = {
          OPERATOR: t.operatorToken,
          AGENT: agentToken,
          OTHER_AGENT: otherAgentToken,
          INTROSPECTOR: t.introspectorToken,
        };
        if (r.authorization)
          headers.Authorization = tokens[r.authorization]
            ? `Bearer ${tokens[r.authorization]}`
            : r.authorization;
        if (r.contentType) headers["Content-Type"] = r.contentType;
        if (r.forwardedFor) headers["X-Forwarded-For"] = r.forwardedFor;
        let payload = r.method === "GET" || r.method === "HEAD" ? undefined : r.body;
        if (payload !== undefined && r.encoding) {
          headers["Content-Encoding"] = r.encoding;
          if (r.compress && r.encoding === "gzip") payload = gzipSync(payload);
          if (r.compress && r.encoding === "br") payload = brotliCompressSync(payload);
        }
        return { method: r.method, path: r.path, headers, body: payload };
      });
  }

  it("answers every request below 500 with a contract code, stays ready, and keeps its state consistent", async function () {
    this.timeout(120_000);
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(requests(), async (req) => {
        sent += 1;
        const res = await fetch(`${base}${req.path}`, {
          method: req.method,
          headers: Object.fromEntries(
            Object.entries(req.headers).map(([name, value]) => [name, asHeaderBytes(value)]),
          ),
          body: req.body,
        });
        const answer = await res.text();
        expect(res.status, `${req.method} ${req.path.slice(0, 200)} -> ${answer.slice(0, 500)}`).to.be.below(
          500,
        );
        // Node itself refuses headers over 16 KB (431) before the app sees the request.
        if (res.status === 431) return;
        expect(res.headers.get("x-content-type-options")).to.equal("nosniff");
        if (res.status >= 400 && req.method !== "HEAD") {
          const error = (JSON.parse(answer) as { error?: { code?: string } | string }).error;
          // The token endpoint answers protocol errors in the OAuth shape, `{error: "<code>"}`.
          const oauthShaped = typeof error === "string" && req.path.startsWith("/v1/token");
          expect(
            oauthShaped ? OAUTH_ERROR_CODES : CONTRACT_ERROR_CODES,
            `${req.method} ${req.path.slice(0, 200)} -> ${answer.slice(0, 500)}`,
          ).to.include(typeof error === "string" ? error : error?.code);
        }
        for (const secret of known.credentials) expect(answer).to.not.include(secret);
      }),
      { numRuns: 400, interruptAfterTimeLimit: 90_000 },
    );
    expect(sent).to.be.at.least(100);

    await eventually(async () => (await fetch(`${base}/readyz`)).status === 200);
    const op = { Authorization: `Bearer ${t.operatorToken}` };
    const tasks = (await t.http.get("/v1/tasks?limit=1000").set(op).expect(200)).body.tasks as {
      id: string;
      agentId: string;
      status: string;
    }[];
    const byId = new Map(tasks.map((task) => [task.id, task]));
    // Settled: nothing stuck mid-issue or mid-revoke, every lease belongs to its task's agent,
    // and no task that has ended holds a live lease.
    const leases = await eventually(async () => {
      const listed = (await t.http.get("/v1/leases?limit=1000").set(op).expect(200)).body.leases as {
        taskId: string;
        agentId: string;
        status: string;
      }[];
      return listed.every((lease) => !["issuing", "revoking"].includes(lease.status)) ? listed : undefined;
    });
    for (const lease of leases) {
      const task = byId.get(lease.taskId);
      expect(task, lease.taskId).to.exist;
      expect(lease.agentId).to.equal(task?.agentId);
      if (task?.status !== "approved") expect(lease.status).to.not.equal("active");
    }
  });
});
