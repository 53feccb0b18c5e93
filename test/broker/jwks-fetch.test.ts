import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { expect } from "chai";
import { ConfigError, parseConfig } from "../../broker/config.ts";
import {
  AgentVerifier,
  IdentityRejectedError,
  JWKS_MAX_BYTES,
} from "../../broker/identity/agent-verifier.ts";
import { TestIssuer } from "../helpers/identity.ts";

function configWith(issuers: Record<string, unknown>[], identity: Record<string, unknown> = {}) {
  return parseConfig({ identity: { audience: "jitkey", issuers, ...identity } });
}

async function rejectionOf(promise: Promise<unknown>): Promise<IdentityRejectedError> {
  try {
    await promise;
  } catch (error) {
    expect(error).to.be.instanceOf(IdentityRejectedError);
    return error as IdentityRejectedError;
  }
  throw new Error("expected the token to be rejected");
}

describe("identity keys: where an issuer's JWKS may come from", () => {
  for (const [uri, why] of [
    ["http://keys.example.com/jwks", "plain http to another host"],
    ["file:///etc/jitkey/jwks.json", "a file URL"],
    ["ftp://keys.example.com/jwks", "another scheme"],
    ["http://10.0.0.8/jwks", "plain http to a private address"],
  ] as const) {
    it(`refuses ${why} at start-up, naming the field`, () => {
      expect(() => configWith([{ name: "ci", issuer: "https://ci.example", jwksUri: uri }]))
        .to.throw(ConfigError)
        .with.property("message")
        .that.matches(/identity\.issuers\.0\.jwksUri: must be an https: URL/);
    });
  }

  it("accepts https anywhere and plain http on a loopback address", () => {
    for (const uri of [
      "https://token.actions.githubusercontent.com/.well-known/jwks",
      "http://127.0.0.1:8200/jwks",
      "http://localhost/jwks",
      "http://[::1]:9000/jwks",
    ]) {
      expect(
        configWith([{ name: "ci", issuer: "https://ci.example", jwksUri: uri }]).identity.issuers[0]?.jwksUri,
      ).to.equal(uri);
    }
  });
});

describe("identity keys: a hostile or broken JWKS endpoint", () => {
  let server: Server;
  let base: string;
  let remote: TestIssuer;
  let local: TestIssuer;
  /** Bytes each path has written before the client went away. */
  const written = new Map<string, number>();
  const handlers: Record<string, (req: IncomingMessage, res: ServerResponse) => void> = {};

  before(async () => {
    remote = await TestIssuer.create("remote");
    local = await TestIssuer.create("local");
    handlers["/good"] = (_req, res) => {
      res.setHeader("Content-Type", "application/json").end(JSON.stringify(remote.jwks));
    };
    handlers["/declared-huge"] = (_req, res) => {
      res.writeHead(200, { "Content-Type": "application/json", "Content-Length": String(400 * 1024 * 1024) });
      res.write('{"keys":[');
    };
    handlers["/streamed-huge"] = (req, res) => {
      res.writeHead(200, { "Content-Type": "application/json" });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      let sent = 0;
      res.write('{"keys":[');
      const pump = () => {
        // Up to 8 MiB of whitespace, as fast as the client reads it.
        while (sent < 8 * 1024 * 1024 && !res.destroyed) {
          sent += chunk.length;
          written.set(req.url ?? "", sent);
          if (!res.write(chunk)) {
            res.once("drain", pump);
            return;
          }
        }
        res.end("]}");
      };
      pump();
    };
    handlers["/never"] = () => {
      // Accepts the request and never answers.
    };
    handlers["/redirect"] = (_req, res) => {
      res.writeHead(302, { Location: "http://keys.evil.example/jwks" }).end();
    };
    server = createServer((req, res) => handlers[req.url ?? ""]?.(req, res));
    server.listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });

  function verifier(path: string, timeoutSeconds = 5): AgentVerifier {
    const config = configWith(
      [
        { name: "remote", issuer: remote.issuer, jwksUri: `${base}${path}` },
        { name: "local", issuer: local.issuer, jwks: local.jwks },
      ],
      { jwksTimeoutSeconds: timeoutSeconds },
    );
    return new AgentVerifier(config.identity);
  }

  it("verifies agents against a well-behaved remote JWKS", async () => {
    const agent = await verifier("/good").verify(await remote.token("worker"));
    expect(agent.id).to.equal("remote:worker");
  });

  it("refuses a JWKS answer that declares more than 1 MiB without reading it", async () => {
    const rejected = await rejectionOf(verifier("/declared-huge").verify(await remote.token("worker")));
    expect(rejected.reason).to.equal("issuer keys too large");
    expect(rejected.issuer).to.equal("remote");
  });

  it("stops reading a streamed JWKS answer past 1 MiB", async () => {
    const rejected = await rejectionOf(verifier("/streamed-huge").verify(await remote.token("worker")));
    expect(rejected.reason).to.equal("issuer keys too large");
    // The server got no further than a socket buffer or two past the cap.
    expect(written.get("/streamed-huge")).to.be.below(JWKS_MAX_BYTES + 4 * 1024 * 1024);
  });

  it("refuses a JWKS endpoint that redirects", async () => {
    const rejected = await rejectionOf(verifier("/redirect").verify(await remote.token("worker")));
    expect(rejected.reason).to.equal("issuer keys unavailable");
  });

  it("times out a JWKS endpoint that never answers, holding up only that issuer's agents", async () => {
    const both = verifier("/never", 0.5);
    const order: string[] = [];
    const slow = both.verify(await remote.token("worker")).then(
      () => order.push("remote verified"),
      (error: IdentityRejectedError) => order.push(`remote ${error.reason}`),
    );
    const other = both
      .verify(await local.token("worker"))
      .then((agent) => order.push(`${agent.id} verified`));
    await Promise.all([slow, other]);
    expect(order).to.deep.equal(["local:worker verified", "remote issuer keys timed out"]);
  });
});
