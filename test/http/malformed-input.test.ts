import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { brotliCompressSync, gzipSync } from "node:zlib";
import { expect } from "chai";
import type { Response } from "supertest";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

function expectCode(res: Response, status: number, code: string): void {
  expect(res.status, res.text).to.equal(status);
  expect(res.body.error?.code).to.equal(code);
}

function issuePaths(res: Response): string[] {
  return ((res.body.error?.issues ?? []) as { path: string }[]).map((issue) => issue.path);
}

describe("malformed requests get a 4xx with a contract code, never a 500", () => {
  let t: TestBroker;
  let agent: { Authorization: string };
  let op: { Authorization: string };
  const task = { goal: "read the demo api", resources: [{ resource: "demo-api", scopes: ["read"] }] };

  let server: Server;
  before(async () => {
    t = await startTestBroker({ name: "malformed", workers: false });
    agent = { Authorization: `Bearer ${await t.agentToken("repo:acme/app:ref:refs/heads/main")}` };
    op = { Authorization: `Bearer ${t.operatorToken}` };
    server = createServer(t.app).listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
  });
  after(async () => {
    server.close();
    await t.close();
  });

  /** POSTs bytes exactly as given (supertest would serialize a Buffer as JSON). */
  async function post(body: Buffer | string, headers: Record<string, string>): Promise<Response> {
    const { port } = server.address() as AddressInfo;
    const res = await fetch(`http://127.0.0.1:${port}/v1/tasks`, {
      method: "POST",
      headers: { ...agent, "Content-Type": "application/json", ...headers },
      body,
    });
    const text = await res.text();
    return { status: res.status, text, body: JSON.parse(text) } as unknown as Response;
  }

  describe("transport", () => {
    for (const encoding of ["gzip", "deflate", "br"]) {
      it(`answers 400 to a body whose ${encoding} encoding is corrupt`, async () => {
        expectCode(
          await post("{not compressed at all", { "Content-Encoding": encoding }),
          400,
          "invalid_request",
        );
      });
    }

    it("accepts a well-formed gzip and brotli body", async () => {
      const json = JSON.stringify(task);
      expect((await post(gzipSync(json), { "Content-Encoding": "gzip" })).status).to.equal(201);
      expect((await post(brotliCompressSync(json), { "Content-Encoding": "br" })).status).to.equal(201);
    });

    it("answers 413 to a compressed body that inflates past the limit", async () => {
      const bomb = gzipSync(JSON.stringify({ ...task, goal: "x".repeat(1_000_000) }));
      expect(bomb.length).to.be.below(10_000);
      expectCode(await post(bomb, { "Content-Encoding": "gzip" }), 413, "invalid_request");
    });

    it("answers 415 to an unknown encoding, an unknown charset and a media type no route reads", async () => {
      expectCode(await post("{}", { "Content-Encoding": "compress" }), 415, "invalid_request");
      expectCode(
        await post("{}", { "Content-Type": "application/json; charset=klingon" }),
        415,
        "invalid_request",
      );
      expectCode(await post(JSON.stringify(task), { "Content-Type": "text/plain" }), 415, "invalid_request");
      expectCode(await post("<task/>", { "Content-Type": "application/xml" }), 415, "invalid_request");
    });

    it("answers 400 to JSON that does not parse, and never quotes the body back", async () => {
      const res = await post('{"goal": "secret-looking-abc123", ', {});
      expectCode(res, 400, "invalid_request");
      expect(res.text).to.not.include("secret-looking-abc123");
    });

    it("answers 400 to a path with an invalid % escape", async () => {
      expectCode(await t.http.get("/v1/tasks/tsk_%E0%A4%A").set(op), 400, "invalid_request");
      expectCode(await t.http.get("/v1/leases/%zz").set(op), 400, "invalid_request");
    });
  });

  describe("cursors, filters and ids", () => {
    it("answers 400 to an audit cursor that is not an event id", async () => {
      for (const after of ["notanid", "1-", "-1", "18446744073709551616-0-0", "1-2", "1-2-3-4"]) {
        const res = await t.http.get(`/v1/audit?after=${encodeURIComponent(after)}`).set(op);
        expectCode(res, 400, "invalid_request");
        expect(issuePaths(res)).to.include("after");
      }
      expect((await t.http.get("/v1/audit?after=0-0-0").set(op)).status).to.equal(200);
      // Well formed, but no shard 999 exists.
      expectCode(await t.http.get("/v1/audit?after=1-0-999").set(op), 400, "invalid_request");
    });

    it("answers 400 to filters naming ids the broker could not have made", async () => {
      expectCode(await t.http.get("/v1/leases?taskId=../../etc").set(op), 400, "invalid_request");
      expectCode(await t.http.get("/v1/audit?leaseId=tsk_wrongkind").set(op), 400, "invalid_request");
      expectCode(await t.http.get(`/v1/tasks?agentId=${"a".repeat(600)}`).set(op), 400, "invalid_request");
      expectCode(
        await t.http.get("/v1/tasks?status=pending&status=approved").set(op),
        400,
        "invalid_request",
      );
    });

    it("answers 404 to route ids of the wrong kind or length", async () => {
      expectCode(await t.http.get("/v1/tasks/lse_abc").set(op), 404, "not_found");
      expectCode(await t.http.get(`/v1/leases/lse_${"x".repeat(44)}`).set(op), 404, "not_found");
      expectCode(await t.http.delete("/v1/leases/anything").set(op), 404, "not_found");
    });
  });

  describe("what an approver reads", () => {
    for (const [what, goal] of [
      ["NUL", "read\u0000tickets"],
      ["a right-to-left override", "read tickets\u202Eetirw dna"],
      ["a bidi isolate", "read \u2066tickets\u2069"],
      ["a newline", "read tickets\nApproved by security: yes"],
      ["an escape sequence", "read \u001b[2Jtickets"],
      ["a zero-width space", "read\u200Btickets"],
    ] as const) {
      it(`refuses a goal holding ${what}`, async () => {
        const res = await t.http
          .post("/v1/tasks")
          .set(agent)
          .send({ ...task, goal });
        expectCode(res, 400, "invalid_request");
        expect(issuePaths(res)).to.include("goal");
      });
    }

    it("keeps goals in any script, and refuses one over 2000 characters", async () => {
      const ok = await t.http
        .post("/v1/tasks")
        .set(agent)
        .send({ ...task, goal: "Résumé der Tickets — 要約する — تلخيص" });
      expect(ok.status, ok.text).to.equal(201);
      expectCode(
        await t.http
          .post("/v1/tasks")
          .set(agent)
          .send({ ...task, goal: "x".repeat(2001) }),
        400,
        "invalid_request",
      );
    });

    it("refuses a task that lists the same resource twice, or a scope twice", async () => {
      const twice = await t.http
        .post("/v1/tasks")
        .set(agent)
        .send({
          goal: "read",
          resources: [
            { resource: "demo-api", scopes: ["read"] },
            { resource: "demo-api", scopes: ["read"] },
          ],
        });
      expectCode(twice, 400, "invalid_request");
      expect(issuePaths(twice)).to.include("resources");
      const scopes = await t.http
        .post("/v1/tasks")
        .set(agent)
        .send({ goal: "read", resources: [{ resource: "demo-api", scopes: ["read", "read"] }] });
      expectCode(scopes, 400, "invalid_request");
    });

    it("refuses control characters in an operator's note and revocation reason too", async () => {
      const created = await t.http
        .post("/v1/tasks")
        .set({ Authorization: `Bearer ${await t.agentToken("agent-note")}` })
        .send(task)
        .expect(201);
      expect(created.body.task.status).to.equal("pending");
      expectCode(
        await t.http.post(`/v1/tasks/${created.body.task.id}/approve`).set(op).send({ note: "ok\u202Eon" }),
        400,
        "invalid_request",
      );
      expectCode(
        await t.http.post("/v1/revocations").set(op).send({ all: true, reason: "incident\u0000" }),
        400,
        "invalid_request",
      );
    });
  });
});

describe("response headers", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "headers", workers: false });
  });
  after(async () => {
    await t.close();
  });

  it("says nosniff and no-store on every /v1 answer: success, error and unknown route", async () => {
    const op = { Authorization: `Bearer ${t.operatorToken}` };
    for (const res of [
      await t.http.get("/v1/tasks").set(op),
      await t.http.get("/v1/audit").set(op),
      await t.http.get("/v1/tasks"),
      await t.http.get("/v1/nothing-here"),
      await t.http.post("/v1/introspect").set(op).send({ token: "x.y.z" }),
    ]) {
      expect(res.headers["x-content-type-options"], res.text).to.equal("nosniff");
      expect(res.headers["cache-control"], res.text).to.equal("no-store");
      expect(res.headers["x-frame-options"]).to.equal("DENY");
      expect(res.headers["content-security-policy"]).to.include("default-src 'none'");
    }
    const jwks = await t.http.get("/.well-known/jwks.json").expect(200);
    expect(jwks.headers["x-content-type-options"]).to.equal("nosniff");
    expect(jwks.headers["cache-control"]).to.equal("public, max-age=300");
  });

  it("sends no CORS headers unless origins are configured", async () => {
    const res = await t.http.get("/healthz").set("Origin", "https://evil.example");
    expect(res.headers).to.not.have.property("access-control-allow-origin");
    const preflight = await t.http
      .options("/v1/tasks")
      .set("Origin", "https://evil.example")
      .set("Access-Control-Request-Method", "POST");
    expect(preflight.headers).to.not.have.property("access-control-allow-origin");
  });

  it("answers CORS for configured origins only", async () => {
    const withCors = await startTestBroker({
      name: "headers-cors",
      workers: false,
      config: (raw) => {
        raw.http = { ...(raw.http as object), cors: { origins: ["https://console.example.com"] } };
      },
    });
    try {
      const preflight = await withCors.http
        .options("/v1/tasks")
        .set("Origin", "https://console.example.com")
        .set("Access-Control-Request-Method", "POST")
        .set("Access-Control-Request-Headers", "authorization, content-type");
      expect(preflight.status).to.equal(204);
      expect(preflight.headers["access-control-allow-origin"]).to.equal("https://console.example.com");
      expect(preflight.headers["access-control-allow-headers"]).to.match(/authorization/i);
      const other = await withCors.http.get("/healthz").set("Origin", "https://evil.example");
      expect(other.headers).to.not.have.property("access-control-allow-origin");
    } finally {
      await withCors.close();
    }
  });
});
