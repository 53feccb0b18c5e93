import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect } from "chai";
import { parsePlainBody } from "../../broker/http/hot-routes.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";

interface Answer {
  status: number;
  headers: Headers;
  body: { error?: { code?: string; message?: string }; active?: boolean; lease?: unknown };
}

/**
 * Minting and introspection are served ahead of Express, and read plain bodies themselves. A
 * `Content-Encoding: identity` header sends the same bytes through the body parsers instead:
 * every body must get the same answer both ways.
 */
describe("hot routes read plain bodies exactly as the body parsers do", () => {
  let t: TestBroker;
  let server: Server;
  let agent: string;
  let op: string;
  let taskId: string;

  before(async () => {
    t = await startTestBroker({ name: "hot-routes", workers: false });
    agent = `Bearer ${await t.agentToken("repo:acme/app:ref:refs/heads/main")}`;
    op = `Bearer ${t.operatorToken}`;
    server = createServer(t.app).listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    const created = await t.http
      .post("/v1/tasks")
      .set({ Authorization: agent })
      .send({ goal: "read the demo api", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);
    taskId = created.body.task.id as string;
    if (created.body.task.status === "pending")
      await t.http.post(`/v1/tasks/${taskId}/approve`).set({ Authorization: op }).send({}).expect(200);
  });
  after(async () => {
    server.close();
    await t.close();
  });

  async function post(path: string, body: string, headers: Record<string, string>): Promise<Answer> {
    const { port } = server.address() as AddressInfo;
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { method: "POST", headers, body });
    return { status: res.status, headers: res.headers, body: JSON.parse(await res.text()) };
  }

  /** The answer read here and through the parsers; both must agree, and are returned. */
  async function bothWays(path: string, body: string, headers: Record<string, string>): Promise<Answer> {
    const plain = await post(path, body, headers);
    const parsed = await post(path, body, { ...headers, "Content-Encoding": "identity" });
    expect([plain.status, plain.body.error?.code, plain.body.error?.message], body).to.deep.equal([
      parsed.status,
      parsed.body.error?.code,
      parsed.body.error?.message,
    ]);
    return plain;
  }

  const json = (authorization: string, type = "application/json") => ({
    Authorization: authorization,
    "Content-Type": type,
  });
  const form = (type = "application/x-www-form-urlencoded") => ({ Authorization: op, "Content-Type": type });

  it("answers every mint body the same both ways", async () => {
    const path = `/v1/tasks/${taskId}/leases`;
    const cases: [string, number][] = [
      ['{"resource": "demo-api"', 400],
      ['"demo-api"', 400],
      ["[]", 400],
      ["null", 400],
      ["", 400],
      ['{"resource": "demo-api", "sudo": true}', 400],
      ['{"resource": "demo-api", "ttlSeconds": 60}', 201],
      [' \n{"resource": "demo-api"}', 201],
      ['\ufeff{"resource": "demo-api"}', 201],
    ];
    for (const [body, status] of cases)
      expect((await bothWays(path, body, json(agent))).status, body).to.equal(status);
    expect(
      (await bothWays(path, '{"resource": "demo-api"}', json(agent, "Application/JSON; Charset=UTF-8")))
        .status,
    ).to.equal(201);
  });

  it("answers every introspection body the same both ways", async () => {
    const minted = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set({ Authorization: agent })
      .send({ resource: "demo-api" })
      .expect(201);
    const token = minted.body.credential.token as string;
    const active = await bothWays("/v1/introspect", `token=${token}`, form());
    expect(active.body.active).to.equal(true);
    expect(
      (await bothWays("/v1/introspect", `token_type_hint=access_token&token=${token}`, form())).body.active,
    ).to.equal(true);
    expect(
      (
        await bothWays(
          "/v1/introspect",
          `token=${token}`,
          form("application/x-www-form-urlencoded; charset=utf-8"),
        )
      ).body.active,
    ).to.equal(true);
    expect((await bothWays("/v1/introspect", `token=${token}&token=${token}`, form())).status).to.equal(400);
    expect((await bothWays("/v1/introspect", "", form())).status).to.equal(400);
    expect((await bothWays("/v1/introspect", "token=", form())).status).to.equal(400);
    expect((await bothWays("/v1/introspect", `?token=${token}`, form())).status).to.equal(400);
    expect((await bothWays("/v1/introspect", `?token=${token}%41`, form())).status).to.equal(400);
    const parameters = (count: number) => Array.from({ length: count }, (_, i) => `p${i}=1`).join("&");
    expect(
      (await bothWays("/v1/introspect", `token=${token}&${parameters(99)}`, form())).body.active,
    ).to.equal(true);
    expect((await bothWays("/v1/introspect", `token=${token}&${parameters(100)}`, form())).status).to.equal(
      413,
    );
    const empties = (count: number) => `token=${token}${"&".repeat(count)}`;
    expect((await bothWays("/v1/introspect", empties(99), form())).body.active).to.equal(true);
    expect((await bothWays("/v1/introspect", empties(100), form())).status).to.equal(413);
    expect((await bothWays("/v1/introspect", JSON.stringify({ token }), json(op))).body.active).to.equal(
      true,
    );
  });

  it("refuses an unknown body type only when there is a body, as every Express route does", async () => {
    const answers = [];
    for (const path of ["/v1/introspect", `/v1/tasks/${taskId}/leases`, "/v1/tasks"])
      for (const body of ["", "token=x"]) {
        const caller = path === "/v1/introspect" ? op : agent;
        const answer = await post(path, body, { Authorization: caller, "Content-Type": "text/plain" });
        answers.push([path, body, answer.status, answer.body.error?.code]);
      }
    // Content-Length: 0 holds nothing to refuse: the empty body fails validation instead.
    expect(answers).to.deep.equal([
      ["/v1/introspect", "", 400, "invalid_request"],
      ["/v1/introspect", "token=x", 415, "invalid_request"],
      [`/v1/tasks/${taskId}/leases`, "", 400, "invalid_request"],
      [`/v1/tasks/${taskId}/leases`, "token=x", 415, "invalid_request"],
      ["/v1/tasks", "", 400, "invalid_request"],
      ["/v1/tasks", "token=x", 415, "invalid_request"],
    ]);
  });

  it("gives hot answers the same security headers as every other route, errors included", async () => {
    const { port } = server.address() as AddressInfo;
    const other = await fetch(`http://127.0.0.1:${port}/v1/tasks`, { headers: { Authorization: op } });
    expect(other.status).to.equal(200);
    const perAnswer = new Set(["content-length", "date", "x-request-id", "etag", "connection", "keep-alive"]);
    const names = (headers: Headers) => [...headers.keys()].filter((name) => !perAnswer.has(name)).sort();
    const introspected = await post("/v1/introspect", "token=x", form());
    const minted = await post(`/v1/tasks/${taskId}/leases`, '{"resource": "demo-api"}', json(agent));
    const refused = await post("/v1/introspect", "token=x", {
      "Content-Type": "application/x-www-form-urlencoded",
    });
    expect([introspected.status, minted.status, refused.status]).to.deep.equal([200, 201, 401]);
    // A mint answer adds what only it needs; an error what its code needs.
    const own = { [minted.status]: ["location", "pragma"], [refused.status]: ["www-authenticate"] };
    for (const hot of [introspected, minted, refused]) {
      const extra = own[hot.status] ?? [];
      expect(
        names(hot.headers).filter((name) => !extra.includes(name)),
        `${hot.status}`,
      ).to.deep.equal(names(other.headers));
      for (const name of names(other.headers))
        expect(hot.headers.get(name), `${hot.status} ${name}`).to.equal(other.headers.get(name));
      // Once: a header set twice would arrive as two values joined by a comma.
      expect(hot.headers.get("x-request-id"), `${hot.status}`).to.match(/^req_[A-Za-z0-9_-]+$/);
      expect(hot.headers.get("cache-control"), `${hot.status}`).to.equal("no-store");
    }
    expect(minted.headers.get("location")).to.match(/^\/v1\/leases\/lse_/);
    expect(minted.headers.get("pragma")).to.equal("no-cache");
    expect(introspected.headers.get("content-security-policy")).to.include("default-src 'none'");
  });
});

describe("a plain form body", () => {
  /** The oracle: URLSearchParams, repeated names gathered into arrays. */
  function bySearchParams(text: string): Record<string, string | string[]> {
    const form: Record<string, string | string[]> = {};
    for (const [name, value] of new URLSearchParams(text)) {
      const seen = form[name];
      form[name] = seen === undefined ? value : [...(Array.isArray(seen) ? seen : [seen]), value];
    }
    return form;
  }

  it("is read as URLSearchParams reads it, escaped or not", () => {
    const token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_x";
    for (const text of [
      `token=${token}`,
      `&token=${token}&&token_type_hint=access_token&`,
      "flag&=only-value&a=b=c&a=&a",
      "a+b=c+d&e=%41%zz&f=%E2%82%AC",
      "===&&&=",
    ]) {
      const parsed = parsePlainBody("form", text, 100);
      expect({ ...(parsed as object) }, text).to.deep.equal(bySearchParams(text));
    }
    // A leading `?` stays in the first name, as the body parser (qs) keeps it, escaped or not.
    expect({ ...(parsePlainBody("form", "?token=a", 100) as object) }).to.deep.equal({ "?token": "a" });
    expect({ ...(parsePlainBody("form", "?token=a%41", 100) as object) }).to.deep.equal({ "?token": "aA" });
  });
});
