import { randomBytes } from "node:crypto";
import { expect } from "chai";
import { OAuth2Client } from "google-auth-library";
import { ZodError } from "zod";
import { createGcpAdapter } from "../../adapters/gcp/gcp-adapter.ts";
import type { GcpAdapterError } from "../../adapters/gcp/gcp-errors.ts";
import type { CredentialAdapter, IssueRequest } from "../../adapters/types.ts";
import { type Clock, ManualClock } from "../../broker/clock.ts";
import type { Logger } from "../../broker/logger.ts";
import { describeAdapterConformance, newTestLeaseId } from "../conformance/adapter-conformance.ts";
import { FakeGcpServer } from "../fakes/gcp-fake/fake-gcp-server.ts";
import { capturingLogger, closedPort, expectAdapterError } from "../helpers/adapter-assertions.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";

const RESOURCE = "gcp-reports";
const BROKER_PRINCIPAL = "jitkey-broker@broker-project.iam.gserviceaccount.com";
const TARGET = "reports-reader@acme-prod.iam.gserviceaccount.com";
const HOP = "hop@acme-prod.iam.gserviceaccount.com";
const EXTENDED = "long-lived@acme-prod.iam.gserviceaccount.com";
const READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only";
const CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform";
const BUCKET_RULE = {
  availableResource: "//storage.googleapis.com/projects/_/buckets/acme-reports",
  availablePermissions: ["inRole:roles/storage.objectViewer"],
  availabilityCondition: {
    expression: "resource.name.startsWith('projects/_/buckets/acme-reports/objects/2024/')",
    title: "2024 only",
  },
};
const LOGS_RULE = {
  availableResource: "//storage.googleapis.com/projects/_/buckets/acme-logs",
  availablePermissions: ["inRole:roles/storage.objectViewer"],
};
const SCOPES = {
  read: [READ_ONLY],
  admin: [CLOUD_PLATFORM, READ_ONLY],
  reports: { oauthScopes: [READ_ONLY], accessBoundary: [BUCKET_RULE] },
  logs: { oauthScopes: [READ_ONLY], accessBoundary: [LOGS_RULE] },
};

/** An auth client that always presents `token`, as google-auth-library would after a login. */
function fixedTokenClient(token: string): OAuth2Client {
  const client = new OAuth2Client();
  client.setCredentials({ access_token: token, expiry_date: Date.now() + 3_600_000 });
  return client;
}

function issueRequest(scopes: string[], now: number, ttlSeconds = 300): IssueRequest {
  return {
    leaseId: newTestLeaseId(),
    taskId: `tsk_${randomBytes(8).toString("base64url")}`,
    agentId: "ci:repo:acme/reports",
    resource: RESOURCE,
    scopes,
    expiresAt: new Date(Math.floor(now / 1000) * 1000 + ttlSeconds * 1000),
  };
}

describe("gcp adapter (fake IAM Credentials and STS, real Google client)", () => {
  let fake: FakeGcpServer;
  let clock: ManualClock;
  let brokerToken: string;
  const open: CredentialAdapter[] = [];

  const gcpAdapter = (
    extra: Record<string, unknown> = {},
    options: { clock?: Clock; token?: string; logger?: Logger } = {},
  ) => {
    const created = createGcpAdapter(
      {
        serviceAccount: TARGET,
        scopes: SCOPES,
        apiEndpoint: fake.address,
        stsEndpoint: fake.stsEndpoint,
        ...extra,
      },
      testAdapterContext({
        resource: RESOURCE,
        clock: options.clock ?? clock,
        ...(options.logger ? { logger: options.logger } : {}),
      }),
      { authClient: fixedTokenClient(options.token ?? brokerToken) },
    );
    open.push(created);
    return created;
  };

  const generateRequests = () =>
    fake.requests.filter((request) => request.path.endsWith(":generateAccessToken"));
  const stsRequests = () => fake.requests.filter((request) => request.path === "/v1/token");

  before(async () => {
    clock = new ManualClock(Date.parse("2030-01-01T00:00:00Z"));
    fake = await FakeGcpServer.start({ clock });
    brokerToken = `ya29.broker-${randomBytes(16).toString("hex")}`;
    fake.addCaller(brokerToken, BROKER_PRINCIPAL);
    fake.addServiceAccount({ email: TARGET, tokenCreators: [BROKER_PRINCIPAL, HOP] });
    fake.addServiceAccount({ email: HOP, tokenCreators: [BROKER_PRINCIPAL] });
    fake.addServiceAccount({ email: EXTENDED, tokenCreators: [BROKER_PRINCIPAL], lifetimeExtension: true });
  });

  after(async () => {
    await Promise.allSettled(open.map((created) => created.close?.()));
    await fake.stop();
  });

  describeAdapterConformance("gcp", async () => ({
    // The suite builds its leases from the real clock.
    adapter: gcpAdapter({}, { clock: { now: () => Date.now() } }),
    resource: RESOURCE,
    scopes: ["read"],
    // Nothing is named in Google; what carries the lease id is the request reason Cloud Audit Logs record.
    findCreated: async (leaseId) =>
      fake
        .minted()
        .filter((token) => token.requestReason?.includes(`lease=${leaseId} `))
        .map((token) => `token for ${token.serviceAccount}, request reason "${token.requestReason}"`),
  }));

  describe("issue", () => {
    it("asks for the lease's TTL, its scopes and delegates for projects/-/serviceAccounts/<email>", async () => {
      const request = issueRequest(["read"], clock.now(), 300);
      const issued = await gcpAdapter({ delegates: [HOP] }).issue(request);

      const sent = generateRequests().at(-1);
      expect(decodeURIComponent(sent?.path ?? "")).to.equal(
        `/v1/projects/-/serviceAccounts/${TARGET}:generateAccessToken`,
      );
      expect(JSON.parse(sent?.body ?? "")).to.deep.equal({
        delegates: [`projects/-/serviceAccounts/${HOP}`],
        scope: [READ_ONLY],
        lifetime: "300s",
      });
      expect(sent?.headers.authorization).to.equal(`Bearer ${brokerToken}`);
      expect(sent?.headers["x-goog-request-reason"]).to.equal(
        `jitkey lease=${request.leaseId} task=${request.taskId} agent=ci:repo:acme/reports resource=${RESOURCE}`,
      );
      const minted = fake.minted().at(-1);
      expect(minted?.name).to.equal(`projects/-/serviceAccounts/${TARGET}`);
      expect(issued.credential).to.deep.equal({
        type: "gcp",
        accessToken: minted?.accessToken,
        expiresAt: request.expiresAt.toISOString(),
      });
      expect(issued.handle).to.equal(undefined);
    });

    it("omits delegates when none are configured and merges the scopes of several jitkey scopes", async () => {
      await gcpAdapter().issue(issueRequest(["read", "admin"], clock.now(), 120));
      expect(JSON.parse(generateRequests().at(-1)?.body ?? "")).to.deep.equal({
        scope: [READ_ONLY, CLOUD_PLATFORM],
        lifetime: "120s",
      });
    });

    it("caps the token at maxTtlSeconds and reports the shorter expiry", async () => {
      const request = issueRequest(["read"], clock.now(), 3_000);
      const issued = await gcpAdapter({ maxTtlSeconds: 420 }).issue(request);
      expect(JSON.parse(generateRequests().at(-1)?.body ?? "").lifetime).to.equal("420s");
      const expected = new Date(clock.now() + 420_000);
      expect(issued.expiresAt?.getTime()).to.equal(expected.getTime());
      expect(issued.credential.expiresAt).to.equal(expected.toISOString());
    });

    it("caps by default at 600 seconds and declares it", async () => {
      const created = gcpAdapter();
      expect(created.capabilities).to.deep.equal({
        revocation: "none",
        renewable: false,
        maxTtlSeconds: 600,
      });
      await created.issue(issueRequest(["read"], clock.now(), 3_600));
      expect(JSON.parse(generateRequests().at(-1)?.body ?? "").lifetime).to.equal("600s");
    });

    it("reads the lease's TTL from the broker's clock, not the wall clock", async () => {
      // The manual clock is years ahead of the wall clock; a wall-clock TTL would be enormous.
      const request = issueRequest(["read"], clock.now(), 90);
      clock.advance(30_000);
      await gcpAdapter().issue(request);
      expect(JSON.parse(generateRequests().at(-1)?.body ?? "").lifetime).to.equal("60s");
    });

    it("asks for up to 12 hours when maxTtlSeconds allows and the org policy lists the account", async () => {
      const issued = await gcpAdapter({ serviceAccount: EXTENDED, maxTtlSeconds: 43_200 }).issue(
        issueRequest(["read"], clock.now(), 7_200),
      );
      expect(JSON.parse(generateRequests().at(-1)?.body ?? "").lifetime).to.equal("7200s");
      expect(Date.parse(issued.credential.expiresAt)).to.equal(clock.now() + 7_200_000);
    });

    it("refuses a lease that ends in under a second, and an unknown scope, without calling Google", async () => {
      const before = fake.requests.length;
      const ended = issueRequest(["read"], clock.now(), 0);
      expect((await expectAdapterError<GcpAdapterError>(gcpAdapter().issue(ended))).permanent).to.equal(true);
      const unknown = issueRequest(["write"], clock.now());
      expect((await expectAdapterError<GcpAdapterError>(gcpAdapter().issue(unknown))).permanent).to.equal(
        true,
      );
      expect(fake.requests.length).to.equal(before);
    });
  });

  describe("errors", () => {
    const cases = [
      {
        name: "a lifetime above what the account allows is INVALID_ARGUMENT, permanent",
        adapterOptions: { maxTtlSeconds: 7_200 },
        ttl: 7_200,
        status: "INVALID_ARGUMENT",
        permanent: true,
      },
      {
        name: "a caller without Token Creator is PERMISSION_DENIED, permanent",
        adapterOptions: { serviceAccount: HOP, delegates: [TARGET] },
        status: "PERMISSION_DENIED",
        permanent: true,
      },
      {
        name: "an unknown service account is NOT_FOUND, permanent",
        adapterOptions: { serviceAccount: "ghost@acme-prod.iam.gserviceaccount.com" },
        status: "NOT_FOUND",
        permanent: true,
      },
    ];
    for (const testCase of cases) {
      it(testCase.name, async () => {
        const error = await expectAdapterError<GcpAdapterError>(
          gcpAdapter(testCase.adapterOptions).issue(issueRequest(["read"], clock.now(), testCase.ttl ?? 300)),
        );
        expect([error.status, error.permanent]).to.deep.equal([testCase.status, testCase.permanent]);
      });
    }

    it("an unknown broker token is UNAUTHENTICATED, permanent", async () => {
      const error = await expectAdapterError<GcpAdapterError>(
        gcpAdapter({}, { token: "ya29.not-a-known-token" }).issue(issueRequest(["read"], clock.now())),
      );
      expect([error.status, error.permanent]).to.deep.equal(["UNAUTHENTICATED", true]);
    });

    for (const [httpStatus, status] of [
      [429, "RESOURCE_EXHAUSTED"],
      [503, "UNAVAILABLE"],
    ] as const) {
      it(`HTTP ${httpStatus} ${status} is transient and is not retried behind the broker's back`, async () => {
        fake.failNext({ endpoint: "generateAccessToken", httpStatus, status });
        const before = generateRequests().length;
        const error = await expectAdapterError<GcpAdapterError>(
          gcpAdapter().issue(issueRequest(["read"], clock.now())),
        );
        expect([error.status, error.permanent]).to.deep.equal([status, false]);
        expect(generateRequests().length).to.equal(before + 1);
      });
    }

    it("a Google that does not answer within requestTimeoutMs is transient", async () => {
      fake.failNext({
        endpoint: "generateAccessToken",
        httpStatus: 503,
        status: "UNAVAILABLE",
        delayMs: 1_000,
      });
      const error = await expectAdapterError<GcpAdapterError>(
        gcpAdapter({ requestTimeoutMs: 100 }).issue(issueRequest(["read"], clock.now())),
      );
      expect([error.status, error.permanent]).to.deep.equal([undefined, false]);
    });

    it("an unreachable endpoint is transient", async () => {
      const error = await expectAdapterError<GcpAdapterError>(
        gcpAdapter({ apiEndpoint: `http://127.0.0.1:${await closedPort()}` }).issue(
          issueRequest(["read"], clock.now()),
        ),
      );
      expect(error.permanent).to.equal(false);
    });

    it("keeps the broker's and the minted tokens out of errors and logs", async () => {
      const { logger, lines } = capturingLogger();
      const created = gcpAdapter({}, { logger });
      const issued = await created.issue(issueRequest(["read"], clock.now()));
      fake.failNext({ endpoint: "generateAccessToken", httpStatus: 403, status: "PERMISSION_DENIED" });
      const error = await expectAdapterError<GcpAdapterError>(
        created.issue(issueRequest(["read"], clock.now())),
      );
      fake.failNext({ endpoint: "sts", httpStatus: 400, status: "invalid_grant" });
      const stsError = await expectAdapterError<GcpAdapterError>(
        created.issue(issueRequest(["reports"], clock.now())),
      );
      await created.revoke({ leaseId: newTestLeaseId(), resource: RESOURCE });
      const seen = [error.message, stsError.message, ...lines].join("\n");
      for (const secret of [
        brokerToken,
        String(issued.credential.accessToken),
        ...fake.minted().map((t) => t.accessToken),
      ]) {
        expect(seen).to.not.include(secret);
      }
      expect([error.cause, stsError.cause]).to.deep.equal([undefined, undefined]);
    });
  });

  describe("access boundaries (STS token exchange)", () => {
    it("exchanges the token for one bounded by the scope's rules and returns only that", async () => {
      const request = issueRequest(["reports"], clock.now(), 300);
      const issued = await gcpAdapter().issue(request);

      const sts = stsRequests().at(-1);
      expect(sts?.headers.authorization).to.equal(undefined);
      expect(sts?.headers["content-type"]).to.match(/^application\/x-www-form-urlencoded/);
      const form = new URLSearchParams(sts?.body);
      const source = fake.minted().find((token) => token.accessToken === form.get("subject_token"));
      expect(source?.accessBoundary).to.equal(undefined);
      expect(Object.fromEntries([...form].filter(([key]) => key !== "subject_token"))).to.deep.equal({
        grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
        subject_token_type: "urn:ietf:params:oauth:token-type:access_token",
        requested_token_type: "urn:ietf:params:oauth:token-type:access_token",
        options: JSON.stringify({ accessBoundary: { accessBoundaryRules: [BUCKET_RULE] } }),
      });
      // The body carried `options` URL-encoded, as the form encoding requires.
      expect(sts?.body).to.match(/(^|&)options=%7B%22accessBoundary%22%3A/);
      expect(sts?.body).to.not.include("{");

      const bounded = fake.minted().find((token) => token.sourceToken === source?.accessToken);
      expect(issued.credential.accessToken).to.equal(bounded?.accessToken);
      expect(issued.credential.accessToken).to.not.equal(source?.accessToken);
      expect(bounded?.requestReason).to.include(`lease=${request.leaseId} `);
      expect(issued.credential.expiresAt).to.equal(request.expiresAt.toISOString());
    });

    it("merges the rules of several bounded scopes into one boundary", async () => {
      await gcpAdapter().issue(issueRequest(["reports", "logs"], clock.now()));
      const options = JSON.parse(new URLSearchParams(stsRequests().at(-1)?.body).get("options") ?? "");
      expect(options.accessBoundary.accessBoundaryRules).to.deep.equal([BUCKET_RULE, LOGS_RULE]);
    });

    it("applies no boundary when one granted scope is unbounded", async () => {
      const before = stsRequests().length;
      const issued = await gcpAdapter().issue(issueRequest(["reports", "read"], clock.now()));
      expect(stsRequests().length).to.equal(before);
      expect(fake.minted().at(-1)?.accessToken).to.equal(issued.credential.accessToken);
    });

    it("maps STS errors: invalid_grant permanent, 503 transient", async () => {
      fake.failNext({ endpoint: "sts", httpStatus: 400, status: "invalid_grant" });
      const refused = await expectAdapterError<GcpAdapterError>(
        gcpAdapter().issue(issueRequest(["reports"], clock.now())),
      );
      expect([refused.status, refused.permanent]).to.deep.equal(["invalid_grant", true]);
      fake.failNext({ endpoint: "sts", httpStatus: 503, status: "temporarily_unavailable" });
      const unavailable = await expectAdapterError<GcpAdapterError>(
        gcpAdapter().issue(issueRequest(["reports"], clock.now())),
      );
      expect(unavailable.permanent).to.equal(false);
    });
  });

  describe("revocation, renewal, sweep and health", () => {
    it("revokes as a harmless no-op that calls nothing", async () => {
      const created = gcpAdapter();
      const request = issueRequest(["read"], clock.now());
      const issued = await created.issue(request);
      const before = fake.requests.length;
      await created.revoke({ leaseId: request.leaseId, resource: RESOURCE, handle: issued.handle });
      await created.revoke({ leaseId: newTestLeaseId(), resource: RESOURCE });
      expect(fake.requests.length).to.equal(before);
      expect([created.renew, created.sweepOrphans]).to.deep.equal([undefined, undefined]);
    });

    it("reports healthy when the broker's credentials produce a token, unhealthy when they cannot", async () => {
      expect(await gcpAdapter().health()).to.deep.equal({ ok: true });
      const noCredentials = createGcpAdapter(
        { serviceAccount: TARGET, scopes: SCOPES, apiEndpoint: fake.address },
        testAdapterContext({ resource: RESOURCE, clock }),
        { authClient: new OAuth2Client() },
      );
      open.push(noCredentials);
      const health = await noCredentials.health();
      expect(health.ok).to.equal(false);
      expect(health.detail).to.be.a("string").and.not.be.empty;
    });
  });

  describe("options", () => {
    const parseError = (options: Record<string, unknown>): string[] => {
      try {
        createGcpAdapter(
          { serviceAccount: TARGET, scopes: SCOPES, ...options },
          testAdapterContext({ resource: RESOURCE }),
        );
      } catch (error) {
        expect(error).to.be.instanceOf(ZodError);
        return (error as ZodError).issues.map((issue) => issue.path.join("."));
      }
      expect.fail("expected the options to be refused");
    };

    it("refuses a lifetime cap above GCP's 12 hours", () => {
      expect(parseError({ maxTtlSeconds: 43_201 })).to.deep.equal(["maxTtlSeconds"]);
    });

    it("refuses a malformed service account, delegate or scope map", () => {
      expect(parseError({ serviceAccount: "not an email" })).to.deep.equal(["serviceAccount"]);
      expect(parseError({ delegates: ["projects/x"] })).to.deep.equal(["delegates.0"]);
      expect(parseError({ scopes: {} })).to.deep.equal(["scopes"]);
      expect(parseError({ scopes: { read: [] } })).to.deep.equal(["scopes.read"]);
    });

    it("refuses boundary permissions that are not inRole: and more than ten rules in all", () => {
      const bad = {
        oauthScopes: [READ_ONLY],
        accessBoundary: [{ ...LOGS_RULE, availablePermissions: ["storage.objects.get"] }],
      };
      expect(parseError({ scopes: { read: bad } })[0]).to.match(/^scopes\.read/);
      const many = Object.fromEntries(
        Array.from({ length: 11 }, (_, index) => [
          `s${index}`,
          {
            oauthScopes: [READ_ONLY],
            accessBoundary: [
              { ...LOGS_RULE, availableResource: `//storage.googleapis.com/projects/_/buckets/b${index}` },
            ],
          },
        ]),
      );
      expect(parseError({ scopes: many })).to.deep.equal(["scopes"]);
    });

    it("takes the broker's credentials JSON from a secret reference and refuses a malformed one", () => {
      const name = `JITKEY_TEST_GCP_CREDENTIALS_${randomBytes(3).toString("hex").toUpperCase()}`;
      process.env[name] = "{not json";
      try {
        expect(parseError({ credentials: { env: name } })).to.deep.equal(["credentials"]);
        process.env[name] = JSON.stringify({
          type: "authorized_user",
          client_id: "id",
          client_secret: "secret",
          refresh_token: "refresh",
        });
        const created = createGcpAdapter(
          { serviceAccount: TARGET, scopes: SCOPES, credentials: { env: name } },
          testAdapterContext({ resource: RESOURCE }),
        );
        open.push(created);
        expect(created.kind).to.equal("gcp");
      } finally {
        delete process.env[name];
      }
    });
  });
});
