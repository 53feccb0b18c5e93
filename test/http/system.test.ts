import { expect } from "chai";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { eventually } from "../helpers/redis.ts";

/** The value of one Prometheus sample line, e.g. `name{a="b"} 3`; NaN when absent. */
function sample(metricsText: string, series: string): number {
  const line = metricsText.split("\n").find((l) => l.startsWith(`${series} `));
  return Number(line?.slice(series.length + 1) ?? Number.NaN);
}

describe("system routes", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "system" });
  });
  after(async () => {
    await t.close();
  });

  it("answers /healthz with 200 to anyone", async () => {
    const res = await t.http.get("/healthz").expect(200);
    expect(res.body).to.deep.equal({ status: "ok" });
  });

  it("answers /readyz with 200 when Redis answers and workers are attached", async () => {
    const res = await t.http.get("/readyz").expect(200);
    expect(res.body).to.include({ status: "ready", redis: true });
    expect(res.body.workers).to.be.at.least(1);
  });

  it("exposes the revocation and denial metrics as Prometheus text after traffic", async () => {
    const op = { Authorization: `Bearer ${t.operatorToken}` };
    const ci = { Authorization: `Bearer ${await t.agentToken("repo:acme/app:ref:refs/heads/main")}` };
    const agent = { Authorization: `Bearer ${await t.agentToken("agent-metrics")}` };

    // A lease minted and revoked on task completion.
    const auto = await t.http
      .post("/v1/tasks")
      .set(ci)
      .send({ goal: "read", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);
    const minted = await t.http
      .post(`/v1/tasks/${auto.body.task.id}/leases`)
      .set(ci)
      .send({ resource: "demo-api" })
      .expect(201);
    // A lease denied by policy (TTL over the maximum).
    await t.http
      .post(`/v1/tasks/${auto.body.task.id}/leases`)
      .set(ci)
      .send({ resource: "demo-api", ttlSeconds: 10_000 })
      .expect(403);
    await t.http.post(`/v1/tasks/${auto.body.task.id}/complete`).set(ci).expect(200);
    await eventually(async () => {
      const res = await t.http.get(`/v1/leases/${minted.body.lease.id}`).set(op).expect(200);
      return res.body.lease.status === "revoked";
    });

    // A lease whose revocation fails for good.
    const manual = await t.http
      .post("/v1/tasks")
      .set(agent)
      .send({ goal: "read records", resources: [{ resource: "records", scopes: ["read"] }] })
      .expect(201);
    await t.http.post(`/v1/tasks/${manual.body.task.id}/approve`).set(op).send({}).expect(200);
    const doomed = await t.http
      .post(`/v1/tasks/${manual.body.task.id}/leases`)
      .set(agent)
      .send({ resource: "records" })
      .expect(201);
    t.recording.revokePermanent = true;
    try {
      await t.http.delete(`/v1/leases/${doomed.body.lease.id}`).set(agent).expect(202);
      await eventually(async () => {
        const res = await t.http.get(`/v1/leases/${doomed.body.lease.id}`).set(op).expect(200);
        return res.body.lease.status === "revoke_failed";
      });
    } finally {
      t.recording.revokePermanent = false;
    }

    const res = await t.http.get("/metrics").expect(200);
    expect(res.headers["content-type"]).to.match(/^text\/plain/);
    const text = res.text;
    for (const name of [
      "jitkey_leases_minted_total",
      "jitkey_revocations_total",
      "jitkey_revoke_lag_seconds",
      "jitkey_revoke_failures_total",
      "jitkey_denials_total",
    ]) {
      expect(text).to.include(`# TYPE ${name} `);
    }
    expect(sample(text, 'jitkey_leases_minted_total{resource="demo-api",adapter="jwt"}')).to.equal(1);
    expect(sample(text, 'jitkey_revocations_total{reason="task_completed",resource="demo-api"}')).to.equal(1);
    expect(sample(text, 'jitkey_revoke_lag_seconds_count{reason="task_completed"}')).to.equal(1);
    expect(sample(text, 'jitkey_revoke_lag_seconds_bucket{le="+Inf",reason="task_completed"}')).to.equal(1);
    expect(sample(text, 'jitkey_revoke_failures_total{resource="records"}')).to.equal(1);
    expect(sample(text, 'jitkey_denials_total{decision="lease",code="policy_denied"}')).to.equal(1);
    // No secret, token or lease id reaches the metrics.
    expect(text).to.not.include(minted.body.credential.token);
    expect(text).to.not.include(minted.body.lease.id);
  });

  it("serves an OpenAPI 3.1 document with every route of the API and its request schemas", async () => {
    const res = await t.http.get("/openapi.json").expect(200);
    const doc = res.body as {
      openapi: string;
      paths: Record<
        string,
        Record<string, { requestBody?: { content: Record<string, { schema: unknown }> } }>
      >;
    };
    expect(doc.openapi).to.match(/^3\.1\./);
    const routes: [string, string][] = [
      ["post", "/v1/tasks"],
      ["get", "/v1/tasks/{id}"],
      ["get", "/v1/tasks"],
      ["post", "/v1/tasks/{id}/approve"],
      ["post", "/v1/tasks/{id}/deny"],
      ["post", "/v1/tasks/{id}/complete"],
      ["post", "/v1/tasks/{id}/leases"],
      ["get", "/v1/leases"],
      ["get", "/v1/leases/{id}"],
      ["delete", "/v1/leases/{id}"],
      ["post", "/v1/revocations"],
      ["post", "/v1/introspect"],
      ["get", "/v1/audit"],
      ["get", "/.well-known/jwks.json"],
      ["get", "/healthz"],
      ["get", "/readyz"],
      ["get", "/metrics"],
      ["get", "/openapi.json"],
    ];
    const missing = routes.filter(([method, path]) => !doc.paths[path]?.[method]);
    expect(missing).to.deep.equal([]);

    const schemaOf = (method: string, path: string) =>
      doc.paths[path]?.[method]?.requestBody?.content["application/json"]?.schema as {
        type?: string;
        properties?: Record<string, unknown>;
        required?: string[];
      };
    const createTask = schemaOf("post", "/v1/tasks");
    expect(createTask.type).to.equal("object");
    expect(createTask.properties).to.include.keys("goal", "resources", "dataClassification", "ttlSeconds");
    expect(createTask.required).to.include.members(["goal", "resources"]);
    expect(schemaOf("post", "/v1/tasks/{id}/leases").properties).to.include.keys(
      "resource",
      "scopes",
      "ttlSeconds",
    );
    expect(schemaOf("post", "/v1/revocations").required).to.include("reason");
    expect(schemaOf("post", "/v1/introspect").properties).to.include.keys("token");
    // RFC 7662 callers send the token form-encoded.
    expect(doc.paths["/v1/introspect"]?.post?.requestBody?.content).to.have.property(
      "application/x-www-form-urlencoded",
    );
    expect(schemaOf("post", "/v1/tasks/{id}/approve").properties).to.include.keys("note");
  });

  it("publishes only public keys at /.well-known/jwks.json", async () => {
    const res = await t.http.get("/.well-known/jwks.json").expect(200);
    const keys = res.body.keys as Record<string, unknown>[];
    expect(keys).to.be.an("array").that.is.not.empty;
    for (const key of keys) {
      expect(key).to.include.keys("kty", "kid");
      for (const secretMember of ["d", "p", "q", "dp", "dq", "qi", "k"])
        expect(key).to.not.have.property(secretMember);
    }
  });
});

describe("readiness without workers", () => {
  let t: TestBroker;
  before(async () => {
    t = await startTestBroker({ name: "system-noworkers", workers: false });
  });
  after(async () => {
    await t.close();
  });

  it("answers /readyz with 503 while no revocation worker is attached", async () => {
    const res = await t.http.get("/readyz").expect(503);
    expect(res.body).to.include({ status: "not_ready", redis: true, workers: 0 });
    await t.http.get("/healthz").expect(200);
  });
});
