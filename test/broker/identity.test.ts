import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { expect } from "chai";
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from "jose";
import { parseConfig } from "../../broker/config.ts";
import { UnauthenticatedError } from "../../broker/errors.ts";
import { AgentVerifier, IdentityRejectedError } from "../../broker/identity/agent-verifier.ts";
import type { AgentPrincipal } from "../../broker/identity/principal.ts";
import { PrincipalTokens, sha256Hex } from "../../broker/operators/principal-tokens.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { TestIssuer } from "../helpers/identity.ts";

const AUDIENCE = "jitkey";

/** An issuer whose tokens the test builds claim by claim (no defaults added). */
interface RawIssuer {
  issuer: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
  sign(payload: JWTPayload, header?: { alg?: string; kid?: string }): Promise<string>;
}

async function rawIssuer(name: string): Promise<RawIssuer> {
  const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true });
  const publicJwk = {
    ...(await exportJWK(publicKey)),
    kid: `${name}-${randomBytes(4).toString("hex")}`,
    alg: "ES256",
  };
  const issuer = `https://issuer.test/${name}`;
  return {
    issuer,
    privateKey,
    publicJwk,
    sign: (payload, header = {}) =>
      new SignJWT(payload)
        .setProtectedHeader({ alg: header.alg ?? "ES256", kid: header.kid ?? (publicJwk.kid as string) })
        .sign(privateKey),
  };
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

/** A verifier over inline-JWKS issuers, through the real config schema (defaults applied). */
function verifierFor(
  issuers: Record<string, unknown>[],
  identity: Record<string, unknown> = {},
): AgentVerifier {
  const config = parseConfig({ identity: { audience: AUDIENCE, issuers, ...identity } });
  return new AgentVerifier(config.identity);
}

async function rejection(promise: Promise<unknown>): Promise<IdentityRejectedError> {
  try {
    await promise;
  } catch (error) {
    expect(error).to.be.instanceOf(IdentityRejectedError);
    expect((error as IdentityRejectedError).code).to.equal("unauthenticated");
    expect((error as IdentityRejectedError).status).to.equal(401);
    return error as IdentityRejectedError;
  }
  throw new Error("expected the token to be rejected");
}

describe("AgentVerifier", () => {
  let ci: TestIssuer;
  let raw: RawIssuer;
  let verifier: AgentVerifier;

  before(async () => {
    ci = await TestIssuer.create("ci");
    raw = await rawIssuer("raw");
    verifier = verifierFor([
      ci.config(),
      { name: "raw", issuer: raw.issuer, jwks: { keys: [raw.publicJwk] } },
    ]);
  });

  /** A complete, valid claim set for `raw`; tests remove or bend one claim at a time. */
  function claims(extra: JWTPayload = {}): JWTPayload {
    const now = nowSeconds();
    return { iss: raw.issuer, aud: AUDIENCE, sub: "worker-1", iat: now, exp: now + 300, ...extra };
  }

  for (const alg of ["ES256", "RS256", "EdDSA"] as const) {
    it(`accepts a valid ${alg} token and names the agent <issuer name>:<sub>`, async () => {
      const issuer = await TestIssuer.create(`iss-${alg.toLowerCase()}`, alg);
      const principal = await verifierFor([issuer.config()]).verify(
        await issuer.token("repo:acme/app:ref:refs/heads/main"),
      );
      expect(principal).to.deep.equal({
        kind: "agent",
        id: `iss-${alg.toLowerCase()}:repo:acme/app:ref:refs/heads/main`,
        issuer: `iss-${alg.toLowerCase()}`,
        owner: "platform-team",
      } satisfies AgentPrincipal);
    });
  }

  it("accepts the raw issuer's complete claim set (the baseline the rejections bend)", async () => {
    const principal = await verifier.verify(await raw.sign(claims()));
    expect(principal.id).to.equal("raw:worker-1");
  });

  it("takes the agent id from a custom agentIdClaim", async () => {
    const gh = await TestIssuer.create("gh");
    const custom = verifierFor([gh.config({ agentIdClaim: "repository" })]);
    const token = await gh.token("repo:acme/app:ref:refs/heads/main", { claims: { repository: "acme/app" } });
    expect((await custom.verify(token)).id).to.equal("gh:acme/app");
    const without = await gh.token("repo:acme/app:ref:refs/heads/main");
    await rejection(custom.verify(without));
  });

  it("rejects alg none even with the trusted issuer's claims", async () => {
    const token = `${base64url({ alg: "none", typ: "JWT" })}.${base64url(claims())}.`;
    const error = await rejection(verifier.verify(token));
    expect(error.issuer).to.equal("raw");
  });

  it("rejects HS256 tokens even with the issuer's kid", async () => {
    const secret = randomBytes(32);
    const token = await new SignJWT(claims())
      .setProtectedHeader({ alg: "HS256", kid: raw.publicJwk.kid as string })
      .sign(secret);
    await rejection(verifier.verify(token));
  });

  it("rejects HS256 tokens keyed with the issuer's public key (algorithm confusion)", async () => {
    const confused = new TextEncoder().encode(JSON.stringify(raw.publicJwk));
    const token = await new SignJWT(claims())
      .setProtectedHeader({ alg: "HS256", kid: raw.publicJwk.kid as string })
      .sign(confused);
    await rejection(verifier.verify(token));
    const xBytes = Buffer.from(raw.publicJwk.x as string, "base64url");
    const token2 = await new SignJWT(claims())
      .setProtectedHeader({ alg: "HS256", kid: raw.publicJwk.kid as string })
      .sign(xBytes);
    await rejection(verifier.verify(token2));
  });

  it("rejects a token for another audience", async () => {
    await rejection(verifier.verify(await raw.sign(claims({ aud: "some-other-service" }))));
    await rejection(verifier.verify(await ci.token("agent-1", { audience: "not-jitkey" })));
  });

  it("rejects an untrusted issuer and a missing issuer", async () => {
    const untrusted = await rejection(
      verifier.verify(await raw.sign(claims({ iss: "https://evil.test/raw" }))),
    );
    expect(untrusted.reason).to.equal("untrusted issuer");
    const { iss: _dropped, ...noIss } = claims();
    await rejection(verifier.verify(await raw.sign(noIss)));
  });

  it("rejects a token signed by the raw issuer's key but claiming the ci issuer", async () => {
    // The key belongs to a trusted issuer, just not to the one the token names.
    const token = await raw.sign(claims({ iss: ci.issuer }), { kid: ci.publicJwk.kid as string });
    await rejection(verifier.verify(token));
  });

  it("rejects an expired token, even within its maximum age", async () => {
    const now = nowSeconds();
    await rejection(verifier.verify(await raw.sign(claims({ iat: now - 200, exp: now - 60 }))));
  });

  it("accepts nbf within the clock skew but rejects nbf in the future beyond it", async () => {
    const now = nowSeconds();
    expect((await verifier.verify(await raw.sign(claims({ nbf: now + 10 })))).id).to.equal("raw:worker-1");
    await rejection(verifier.verify(await raw.sign(claims({ nbf: now + 120 }))));
  });

  it("rejects iat in the future beyond the skew", async () => {
    const now = nowSeconds();
    await rejection(verifier.verify(await raw.sign(claims({ iat: now + 120, exp: now + 600 }))));
  });

  it("rejects a token older than maxTokenAgeSeconds even if it has not expired", async () => {
    const strict = verifierFor([{ name: "raw", issuer: raw.issuer, jwks: { keys: [raw.publicJwk] } }], {
      maxTokenAgeSeconds: 120,
    });
    const now = nowSeconds();
    expect((await strict.verify(await raw.sign(claims({ iat: now - 60 })))).id).to.equal("raw:worker-1");
    await rejection(strict.verify(await raw.sign(claims({ iat: now - 600, exp: now + 600 }))));
    // The default maximum age (3600 s) applies when not configured.
    await rejection(
      verifier.verify(await ci.token("agent-1", { iatOffsetSeconds: -4000, expiresInSeconds: 8000 })),
    );
  });

  it("rejects a token without iat or without exp", async () => {
    const { iat: _iat, ...noIat } = claims();
    await rejection(verifier.verify(await raw.sign(noIat)));
    const { exp: _exp, ...noExp } = claims();
    await rejection(verifier.verify(await raw.sign(noExp)));
  });

  it("rejects a signature by another key that reuses the trusted kid", async () => {
    const impostor = await rawIssuer("raw");
    const token = await impostor.sign(claims(), { kid: raw.publicJwk.kid as string });
    await rejection(verifier.verify(token));
  });

  it("rejects a token whose agent id claim is empty", async () => {
    await rejection(verifier.verify(await raw.sign(claims({ sub: "" }))));
  });

  it("rejects text that only looks like a JWT as malformed", async () => {
    const error = await rejection(verifier.verify("abc.def.ghi"));
    expect(error.issuer).to.equal(undefined);
  });

  it("makes IdentityRejectedError an unauthenticated error", () => {
    expect(new IdentityRejectedError("x")).to.be.instanceOf(UnauthenticatedError);
  });
});

describe("AgentVerifier with a remote JWKS (jwksUri)", () => {
  let server: Server;
  let requests: number;
  let issuer: TestIssuer;
  let jwksUri: string;

  before(async () => {
    issuer = await TestIssuer.create("remote");
    requests = 0;
    server = createServer((req, res) => {
      requests += 1;
      if (req.url !== "/jwks") {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(issuer.jwks));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    jwksUri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`;
  });
  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("verifies tokens against the fetched set and fetches it once for many tokens", async () => {
    const verifier = verifierFor([{ name: "remote", issuer: issuer.issuer, jwksUri }]);
    expect(requests).to.equal(0);
    const first = await verifier.verify(await issuer.token("job-1"));
    expect(first.id).to.equal("remote:job-1");
    expect(requests).to.equal(1);
    for (const subject of ["job-2", "job-3", "job-4"]) {
      expect((await verifier.verify(await issuer.token(subject))).id).to.equal(`remote:${subject}`);
    }
    expect(requests).to.equal(1);
  });

  it("still rejects a token from another key when the set is remote", async () => {
    const verifier = verifierFor([{ name: "remote", issuer: issuer.issuer, jwksUri }]);
    const other = await TestIssuer.create("remote", "ES256", issuer.issuer);
    await rejection(verifier.verify(await other.token("job-1")));
  });
});

describe("PrincipalTokens", () => {
  const operatorToken = `op-${randomBytes(16).toString("hex")}`;
  const introspectorToken = `rs-${randomBytes(16).toString("hex")}`;
  const tokens = new PrincipalTokens({
    operators: [{ name: "alice", tokenSha256: sha256Hex(operatorToken) }],
    introspectors: [{ name: "reports-api", tokenSha256: sha256Hex(introspectorToken) }],
  });

  /** `token` with one character changed, same length. */
  function oneOff(token: string, at: number): string {
    const swapped = token[at] === "a" ? "b" : "a";
    return `${token.slice(0, at)}${swapped}${token.slice(at + 1)}`;
  }

  it("matches the operator token to its operator", () => {
    expect(tokens.match(operatorToken)).to.deep.equal({ kind: "operator", id: "alice" });
  });

  it("matches the introspector token to an introspector, not an operator", () => {
    expect(tokens.match(introspectorToken)).to.deep.equal({ kind: "introspector", id: "reports-api" });
  });

  it("does not match a token of the same length with one character different", () => {
    for (const at of [0, 10, operatorToken.length - 1]) {
      const near = oneOff(operatorToken, at);
      expect(near).to.have.length(operatorToken.length).and.not.equal(operatorToken);
      expect(tokens.match(near)).to.equal(undefined);
    }
  });

  it("does not match a prefix, an extension or the hash itself", () => {
    expect(tokens.match(operatorToken.slice(0, -1))).to.equal(undefined);
    expect(tokens.match(`${operatorToken}x`)).to.equal(undefined);
    expect(tokens.match(sha256Hex(operatorToken))).to.equal(undefined);
    expect(tokens.match("")).to.equal(undefined);
  });

  it("accepts upper-case hex in the config (normalised by the schema)", () => {
    const config = parseConfig({
      identity: { audience: AUDIENCE, issuers: [{ name: "x", issuer: "https://x", jwks: { keys: [{}] } }] },
      operators: [{ name: "bob", tokenSha256: sha256Hex(operatorToken).toUpperCase() }],
    });
    expect(new PrincipalTokens(config).match(operatorToken)).to.deep.equal({ kind: "operator", id: "bob" });
  });
});

describe("HTTP authentication: rejections are audited and counted", () => {
  let t: TestBroker;
  let raw: RawIssuer;

  before(async () => {
    raw = await rawIssuer("raw");
    t = await startTestBroker({
      name: "identity-http",
      workers: false,
      config: (config) => {
        const identity = config.identity as { issuers: Record<string, unknown>[] };
        identity.issuers.push({ name: "raw", issuer: raw.issuer, jwks: { keys: [raw.publicJwk] } });
      },
    });
  });
  after(async () => {
    await t.close();
  });

  async function metric(name: string): Promise<number> {
    const res = await t.http.get("/metrics").expect(200);
    const line = res.text.split("\n").find((l) => l.startsWith(`${name} `));
    return Number(line?.split(" ")[1] ?? Number.NaN);
  }

  it("accepts a valid agent token on an agent route and names the agent in the task", async () => {
    const res = await t.http
      .post("/v1/tasks")
      .set("Authorization", `Bearer ${await t.agentToken("repo:acme/app:ref:refs/heads/main")}`)
      .send({ goal: "read", resources: [{ resource: "demo-api", scopes: ["read"] }] })
      .expect(201);
    expect(res.body.task.agentId).to.equal("ci:repo:acme/app:ref:refs/heads/main");
  });

  it("answers 401 to each bad identity token, audits identity_rejected and bumps the metric", async () => {
    const now = nowSeconds();
    const good = { iss: raw.issuer, aud: AUDIENCE, sub: "w", iat: now, exp: now + 300 };
    const { iat: _iat, ...noIat } = good;
    const impostor = await rawIssuer("raw");
    const rejected: string[] = [
      `${base64url({ alg: "none" })}.${base64url(good)}.`,
      await new SignJWT(good)
        .setProtectedHeader({ alg: "HS256", kid: raw.publicJwk.kid as string })
        .sign(randomBytes(32)),
      await raw.sign({ ...good, aud: "other" }),
      await raw.sign({ ...good, iss: "https://untrusted.test" }),
      await raw.sign({ ...good, iat: now - 400, exp: now - 100 }),
      await raw.sign({ ...good, nbf: now + 600 }),
      await raw.sign({ ...good, iat: now - 5000, exp: now + 300 }),
      await raw.sign(noIat),
      await impostor.sign(good, { kid: raw.publicJwk.kid as string }),
    ];
    const before = await metric("jitkey_identity_rejected_total");
    expect(before).to.equal(0);

    for (const token of rejected) {
      const res = await t.http
        .post("/v1/tasks")
        .set("Authorization", `Bearer ${token}`)
        .send({ goal: "read", resources: [{ resource: "demo-api", scopes: ["read"] }] });
      expect(res.status, token).to.equal(401);
      expect(res.body.error.code).to.equal("unauthenticated");
      expect(res.text).to.not.include(token);
    }

    expect(await metric("jitkey_identity_rejected_total")).to.equal(rejected.length);
    const audit = await t.http
      .get("/v1/audit?limit=1000")
      .set("Authorization", `Bearer ${t.operatorToken}`)
      .expect(200);
    const events = (
      audit.body.events as { type: string; decision?: string; reason?: string; route?: string }[]
    ).filter((event) => event.type === "identity_rejected");
    expect(events).to.have.length(rejected.length);
    for (const event of events) {
      expect(event.decision).to.equal("deny");
      expect(event.reason).to.be.a("string").and.not.equal("");
      expect(event.route).to.match(/^POST \/v1\/tasks\/?$/);
    }
    const text = JSON.stringify(audit.body);
    for (const token of rejected) expect(text).to.not.include(token.split(".").at(-1) || token);
  });

  it("tells operators and introspectors apart over HTTP", async () => {
    const asIntrospector = { Authorization: `Bearer ${t.introspectorToken}` };
    const introspected = await t.http
      .post("/v1/introspect")
      .set(asIntrospector)
      .send({ token: "x.y.z" })
      .expect(200);
    expect(introspected.body.active).to.equal(false);
    const audit = await t.http.get("/v1/audit").set(asIntrospector);
    expect(audit.status).to.equal(403);
    expect(audit.body.error.code).to.equal("forbidden");
    const nearOperator = `${t.operatorToken.slice(0, -1)}${t.operatorToken.endsWith("a") ? "b" : "a"}`;
    const near = await t.http.get("/v1/audit").set("Authorization", `Bearer ${nearOperator}`);
    expect(near.status).to.equal(401);
    expect(near.body.error.code).to.equal("unauthenticated");
  });
});
