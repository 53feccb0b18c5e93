import { randomBytes } from "node:crypto";
import { GetRolePolicyCommand, IAMClient } from "@aws-sdk/client-iam";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { expect } from "chai";
import type { Redis } from "ioredis";
import { createAwsAdapter } from "../../adapters/aws/aws-adapter.ts";
import type { AwsRequestError } from "../../adapters/aws/aws-errors.ts";
import type {
  AdapterContext,
  CredentialAdapter,
  IssuedCredential,
  IssueRequest,
} from "../../adapters/types.ts";
import { ManualClock } from "../../broker/clock.ts";
import { RedisLocks } from "../../broker/locks.ts";
import { describeAdapterConformance, newTestLeaseId } from "../conformance/adapter-conformance.ts";
import type { FakeAwsPrincipal, FakeStsSession } from "../fakes/aws-fake/fake-aws-server.ts";
import { FakeAwsServer } from "../fakes/aws-fake/fake-aws-server.ts";
import { capturingLogger, closedPort, expectAdapterError } from "../helpers/adapter-assertions.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";
import { deletePrefix, testRedis, uniquePrefix } from "../helpers/redis.ts";

const RESOURCE = "aws-reports";
const REGION = "eu-west-1";
const POLICY_NAME = "jitkey-revoked-sessions";
const MINUTE = 60_000;

const SCOPES = {
  read: [{ Effect: "Allow", Action: ["s3:GetObject", "s3:ListBucket"], Resource: "arn:aws:s3:::reports/*" }],
  write: [
    { Effect: "Allow", Action: "s3:PutObject", Resource: "arn:aws:s3:::reports/*" },
    { Effect: "Allow", Action: ["s3:GetObject", "s3:ListBucket"], Resource: "arn:aws:s3:::reports/*" },
  ],
  admin: [{ Sid: "All", Effect: "Allow", Action: "s3:*", Resource: "*" }],
};

function issueRequest(
  clock: { now(): number },
  ttlSeconds = 60,
  extra: Partial<IssueRequest> = {},
): IssueRequest {
  return {
    leaseId: newTestLeaseId(),
    taskId: `tsk_${randomBytes(8).toString("base64url")}`,
    agentId: "reports-bot@example.com",
    resource: RESOURCE,
    scopes: ["read"],
    expiresAt: new Date(Math.floor(clock.now() / 1000 + ttlSeconds) * 1000),
    ...extra,
  };
}

describe("aws adapter conformance", () => {
  // The suite runs on the real clock: it computes expiries from Date.now().
  let shared: FakeAwsServer;
  describeAdapterConformance("aws (fake STS and IAM)", async () => {
    shared = await FakeAwsServer.start({ region: REGION });
    const principal = shared.addPrincipal("jitkey-broker");
    const role = shared.addRole("jitkey-conformance");
    return {
      adapter: createAwsAdapter(
        {
          roleArn: role,
          region: REGION,
          endpoint: shared.endpoint,
          credentials: { accessKeyId: principal.accessKeyId, secretAccessKey: principal.secretAccessKey },
          scopes: SCOPES,
        },
        testAdapterContext({ resource: RESOURCE }),
      ),
      resource: RESOURCE,
      scopes: ["read"],
      // Sessions of the lease that can still act: not expired and not denied by the role.
      findCreated: async (leaseId) =>
        shared
          .sessions()
          .filter((s) => s.tags["jitkey-lease"] === leaseId && !shared.isSessionRefused(s))
          .map((s) => `live session ${s.assumedRoleArn} tagged jitkey-lease=${leaseId}`),
      cleanup: () => shared.stop(),
    };
  });
});

describe("aws adapter (fake STS and IAM, real AWS SDK clients)", () => {
  let fake: FakeAwsServer;
  let clock: ManualClock;
  let broker: FakeAwsPrincipal;
  let roleArn: string;
  let roleName: string;
  const open: CredentialAdapter[] = [];

  const options = (extra: Record<string, unknown> = {}) => ({
    roleArn,
    region: REGION,
    endpoint: fake.endpoint,
    credentials: { accessKeyId: broker.accessKeyId, secretAccessKey: broker.secretAccessKey },
    scopes: SCOPES,
    maxAttempts: 1,
    ...extra,
  });
  const awsAdapter = (extra: Record<string, unknown> = {}, context: Partial<AdapterContext> = {}) => {
    const adapter = createAwsAdapter(options(extra), {
      ...testAdapterContext({ resource: RESOURCE, clock, logger: capturingLogger().logger }),
      ...context,
    });
    open.push(adapter);
    return adapter;
  };
  const sessionOf = (leaseId: string): FakeStsSession => {
    const session = fake.sessions().find((s) => s.tags["jitkey-lease"] === leaseId);
    if (!session) throw new Error(`no session for ${leaseId}`);
    return session;
  };
  const denyPolicy = () => JSON.parse(fake.rolePolicy(roleName, POLICY_NAME) ?? "null");
  const requestsSince = (mark: number) => fake.requests.slice(mark).map((r) => `${r.action} ${r.status}`);

  beforeEach(async () => {
    clock = new ManualClock(Date.now());
    fake = await FakeAwsServer.start({ region: REGION, clock });
    broker = fake.addPrincipal("jitkey-broker");
    roleName = `jitkey-${randomBytes(3).toString("hex")}`;
    roleArn = fake.addRole(roleName, { trustedPrincipalArns: [broker.arn] });
  });

  afterEach(async () => {
    for (const adapter of open.splice(0)) await adapter.close?.();
    await fake.stop();
  });

  describe("configuration", () => {
    /** The option paths a ZodError names. */
    function invalidFields(extra: Record<string, unknown>): string[] {
      try {
        awsAdapter(extra);
      } catch (error) {
        const issues = (error as { issues?: { path: PropertyKey[]; keys?: string[] }[] }).issues ?? [];
        return issues.flatMap((issue) => [issue.path.join("."), ...(issue.keys ?? [])]);
      }
      return [];
    }

    it("rejects bad options naming the field", () => {
      const big = [{ Effect: "Allow", Action: "s3:GetObject", Resource: `arn:aws:s3:::${"x".repeat(2100)}` }];
      const half = [
        { Effect: "Allow", Action: "s3:GetObject", Resource: `arn:aws:s3:::${"y".repeat(1100)}` },
      ];
      const cases: [Record<string, unknown>, string][] = [
        [{ roleArn: "arn:aws:iam::123456789012:user/bob" }, "roleArn"],
        [{ region: "Europe" }, "region"],
        [{ scopes: { read: [] } }, "scopes.read"],
        [{ scopes: { read: big } }, "scopes.read"],
        [{ scopes: { a: half, b: [{ ...half[0], Action: "s3:PutObject" }] } }, "scopes"],
        [{ scopes: { read: [{ Effect: "Allow", Resource: "*" }] } }, "scopes.read.0.Action"],
        [
          { scopes: { read: [{ Effect: "Allow", Action: "*", Resource: "*", Principal: "*" }] } },
          "Principal",
        ],
        [
          { scopes: { read: [{ ...SCOPES.read[0], Sid: "A" }], write: [{ ...SCOPES.admin[0], Sid: "A" }] } },
          "scopes",
        ],
        [{ maxSessionDurationSeconds: 600 }, "maxSessionDurationSeconds"],
        [{ endpoint: "not a url" }, "endpoint"],
        [{ credentials: { accessKeyId: "AKIASHORT", secretAccessKey: "s" } }, "credentials.accessKeyId"],
        [
          {
            credentials: {
              accessKeyId: "AKIAAAAAAAAAAAAAAAAA",
              secretAccessKey: { env: "JITKEY_NO_SUCH_VAR" },
            },
          },
          "credentials.secretAccessKey",
        ],
        [{ revocationPolicyName: "has space" }, "revocationPolicyName"],
        [{ surprise: true }, "surprise"],
      ];
      for (const [extra, field] of cases)
        expect(invalidFields(extra), JSON.stringify(extra)).to.include(field);
    });

    it("takes the broker's secret from an environment variable", async () => {
      const variable = `JITKEY_TEST_AWS_SECRET_${randomBytes(3).toString("hex")}`;
      process.env[variable] = broker.secretAccessKey;
      try {
        const adapter = awsAdapter({
          credentials: { accessKeyId: broker.accessKeyId, secretAccessKey: { env: variable } },
        });
        expect(await adapter.health()).to.deep.equal({ ok: true });
      } finally {
        delete process.env[variable];
      }
    });

    it("sends the session token of temporary broker credentials", async () => {
      const sessionToken = randomBytes(40).toString("base64");
      const temporary = fake.addPrincipal("jitkey-broker-temp", { sessionToken });
      const adapter = awsAdapter({
        credentials: {
          accessKeyId: temporary.accessKeyId,
          secretAccessKey: temporary.secretAccessKey,
          sessionToken,
        },
      });
      expect(await adapter.health()).to.deep.equal({ ok: true });
      const wrong = awsAdapter({
        credentials: {
          accessKeyId: temporary.accessKeyId,
          secretAccessKey: temporary.secretAccessKey,
          sessionToken: "not-the-token",
        },
      });
      expect((await wrong.health()).ok).to.equal(false);
    });

    it("declares backend revocation, no renewal, STS's 900 s minimum and the configured maximum", () => {
      const adapter = awsAdapter({ maxSessionDurationSeconds: 7200 });
      expect(adapter.capabilities).to.deep.equal({
        revocation: "backend",
        renewable: false,
        minTtlSeconds: 900,
        maxTtlSeconds: 7200,
      });
      expect(adapter.renew).to.equal(undefined);
      expect(adapter.sweepOrphans).to.equal(undefined);
      expect(awsAdapter().capabilities.maxTtlSeconds).to.equal(3600);
    });
  });

  describe("issue", () => {
    it("assumes the role with the lease's session policy, 900 s for a 60 s lease, lease tags and the agent as source identity", async () => {
      const adapter = awsAdapter();
      const request = issueRequest(clock, 60, { scopes: ["write", "read"] });
      const mark = fake.requests.length;
      await adapter.issue(request);
      const [call] = fake.requests.slice(mark);
      expect(call?.service).to.equal("sts");
      expect(call?.region).to.equal(REGION);
      expect(call?.accessKeyId).to.equal(broker.accessKeyId);
      const { Policy, ...params } = call?.params ?? {};
      expect(params).to.deep.equal({
        RoleArn: roleArn,
        RoleSessionName: request.leaseId,
        DurationSeconds: "900",
        SourceIdentity: "reports-bot@example.com",
        "Tags.member.1.Key": "jitkey-lease",
        "Tags.member.1.Value": request.leaseId,
        "Tags.member.2.Key": "jitkey-task",
        "Tags.member.2.Value": request.taskId,
      });
      // Union of read and write, in configured order, each statement once; no transitive tags.
      expect(JSON.parse(Policy ?? "")).to.deep.equal({
        Version: "2012-10-17",
        Statement: [SCOPES.read[0], SCOPES.write[0]],
      });
    });

    it("returns the session's credentials, ending at the lease's end, with references for revoke", async () => {
      const adapter = awsAdapter();
      const request = issueRequest(clock, 60);
      const issued = await adapter.issue(request);
      const session = sessionOf(request.leaseId);
      expect(issued.credential).to.deep.equal({
        type: "aws",
        accessKeyId: session.accessKeyId,
        secretAccessKey: session.secretAccessKey,
        sessionToken: session.sessionToken,
        region: REGION,
        expiresAt: request.expiresAt.toISOString(),
      });
      expect(issued.handle).to.equal(`arn:aws:sts::123456789012:assumed-role/${roleName}/${request.leaseId}`);
      expect(issued.references).to.include({
        roleArn,
        sessionName: request.leaseId,
        credentialExpiresAt: new Date(clock.now() + 900_000).toISOString(),
      });
      // The credential outlives the lease (STS minimum), so the broker learns no earlier end.
      expect(issued.expiresAt).to.equal(undefined);
    });

    it("asks for the lease's own TTL above 900 s, and caps it at the maximum session duration", async () => {
      const adapter = awsAdapter();
      const mark = fake.requests.length;
      await adapter.issue(issueRequest(clock, 2000));
      const long = issueRequest(clock, 5000);
      const issued = await adapter.issue(long);
      expect(fake.requests.slice(mark).map((r) => r.params.DurationSeconds)).to.deep.equal(["2000", "3600"]);
      const stsEnd = new Date(clock.now() + 3600_000);
      expect(issued.expiresAt).to.deep.equal(stsEnd);
      expect(issued.credential.expiresAt).to.equal(stsEnd.toISOString());
    });

    it("hands out credentials the SDK can use, as the assumed role", async () => {
      const adapter = awsAdapter();
      const request = issueRequest(clock);
      const { credential } = await adapter.issue(request);
      const sts = new STSClient({
        region: REGION,
        endpoint: fake.endpoint,
        credentials: {
          accessKeyId: String(credential.accessKeyId),
          secretAccessKey: String(credential.secretAccessKey),
          sessionToken: String(credential.sessionToken),
        },
      });
      try {
        const identity = await sts.send(new GetCallerIdentityCommand({}));
        expect(identity.Arn).to.equal(
          `arn:aws:sts::123456789012:assumed-role/${roleName}/${request.leaseId}`,
        );
      } finally {
        sts.destroy();
      }
    });

    it("sanitises an agent id STS would refuse and keeps it whole in the jitkey-agent tag", async () => {
      const adapter = awsAdapter();
      const agentId = `ci:repo:acme/${"very-long-repository-name-".repeat(3)}:ref:refs/heads/main`;
      const request = issueRequest(clock, 60, { agentId });
      await adapter.issue(request);
      const session = sessionOf(request.leaseId);
      expect(session.sourceIdentity).to.match(/^ci_repo_acme_very-long[\w+=,.@-]*-[0-9a-f]{12}$/);
      expect(session.sourceIdentity?.length).to.equal(64);
      expect(session.tags["jitkey-agent"]).to.equal(agentId);
    });

    it("refuses a lease without scopes rather than hand out the role's full permissions", async () => {
      const adapter = awsAdapter();
      const mark = fake.requests.length;
      const error = await expectAdapterError<AwsRequestError>(
        adapter.issue(issueRequest(clock, 60, { scopes: [] })),
      );
      expect(error.permanent).to.equal(true);
      expect(fake.requests.length).to.equal(mark);
    });

    it("refuses a scope the resource's options do not configure, permanently", async () => {
      const error = await expectAdapterError<AwsRequestError>(
        awsAdapter().issue(issueRequest(clock, 60, { scopes: ["delete"] })),
      );
      expect(error.permanent).to.equal(true);
    });
  });

  describe("revoke", () => {
    it("denies revoked sessions through the role's inline policy, and leaves live ones alone", async () => {
      const adapter = awsAdapter();
      const issued: [IssueRequest, IssuedCredential][] = [];
      for (const ttl of [60, 1800, 3000, 600]) {
        const request = issueRequest(clock, ttl);
        issued.push([request, await adapter.issue(request)]);
      }
      for (const [request, credential] of issued.slice(0, 3)) {
        await adapter.revoke({
          leaseId: request.leaseId,
          resource: RESOURCE,
          handle: credential.handle,
          references: credential.references,
        });
      }
      const [a, b, c, live] = issued.map(([request]) => request.leaseId) as [string, string, string, string];
      // Each lease sits in the 900 s bucket ending after its credential's expiry + 5 s skew.
      const buckets = new Map<number, string[]>();
      for (const [leaseId, seconds] of [
        [a, 900],
        [b, 1800],
        [c, 3000],
      ] as const) {
        const end = Math.ceil((clock.now() / 1000 + seconds + 5) / 900) * 900;
        buckets.set(end, [...(buckets.get(end) ?? []), leaseId].sort());
      }
      expect(denyPolicy()).to.deep.equal({
        Version: "2012-10-17",
        Statement: [...buckets].map(([end, ids]) => ({
          Sid: `JitkeyRevokedLeasesUntil${end}`,
          Effect: "Deny",
          Action: "*",
          Resource: "*",
          Condition: { StringEquals: { "aws:PrincipalTag/jitkey-lease": ids } },
        })),
      });
      for (const id of [a, b, c]) expect(fake.isSessionRefused(sessionOf(id)), id).to.equal(true);
      expect(fake.isSessionRefused(sessionOf(live))).to.equal(false);
    });

    it("makes the revoked credential fail its next AWS call", async () => {
      const adapter = awsAdapter();
      const request = issueRequest(clock);
      const issued = await adapter.issue(request);
      const iam = new IAMClient({
        region: REGION,
        endpoint: fake.endpoint,
        maxAttempts: 1,
        credentials: {
          accessKeyId: String(issued.credential.accessKeyId),
          secretAccessKey: String(issued.credential.secretAccessKey),
          sessionToken: String(issued.credential.sessionToken),
        },
      });
      const probe = () => iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: POLICY_NAME }));
      try {
        // Before: the call goes through (the policy does not exist yet).
        const before = await probe().catch((error: Error) => error.name);
        expect(before).to.equal("NoSuchEntityException");
        await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, references: issued.references });
        const after = await probe().catch((error: Error & { $metadata?: { httpStatusCode?: number } }) => [
          error.name,
          error.$metadata?.httpStatusCode,
        ]);
        expect(after).to.deep.equal(["AccessDenied", 403]);
      } finally {
        iam.destroy();
      }
    });

    it("revokes by lease id alone, bounding the entry by the maximum session duration", async () => {
      const adapter = awsAdapter();
      const request = issueRequest(clock);
      await adapter.issue(request);
      await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE });
      const [statement] = denyPolicy().Statement;
      expect(statement.Sid).to.equal(
        `JitkeyRevokedLeasesUntil${Math.ceil((clock.now() / 1000 + 3605) / 900) * 900}`,
      );
      expect(fake.isSessionRefused(sessionOf(request.leaseId))).to.equal(true);
    });

    it("writes the deny entry on the role the lease was issued for", async () => {
      const request = issueRequest(clock);
      const issued = await awsAdapter().issue(request);
      const otherRole = fake.addRole(`other-${randomBytes(3).toString("hex")}`);
      await awsAdapter({ roleArn: otherRole }).revoke({
        leaseId: request.leaseId,
        resource: RESOURCE,
        references: issued.references,
      });
      expect(fake.isSessionRefused(sessionOf(request.leaseId))).to.equal(true);
      expect(fake.rolePolicy(otherRole.split("/").pop() ?? "", POLICY_NAME)).to.equal(undefined);
    });

    it("is idempotent: a second revoke reads the policy and writes nothing", async () => {
      const adapter = awsAdapter();
      const request = issueRequest(clock);
      const issued = await adapter.issue(request);
      const revoke = { leaseId: request.leaseId, resource: RESOURCE, references: issued.references };
      await adapter.revoke(revoke);
      const written = fake.rolePolicy(roleName, POLICY_NAME);
      const mark = fake.requests.length;
      await adapter.revoke(revoke);
      expect(requestsSince(mark)).to.deep.equal(["GetRolePolicy 200"]);
      expect(fake.rolePolicy(roleName, POLICY_NAME)).to.equal(written);
    });

    it("succeeds for a lease that was never issued", async () => {
      const leaseId = newTestLeaseId();
      await awsAdapter().revoke({ leaseId, resource: RESOURCE });
      expect(JSON.stringify(denyPolicy())).to.include(leaseId);
    });

    it("needs no entry, and calls nothing, for a credential that has already expired", async () => {
      const adapter = awsAdapter();
      const request = issueRequest(clock);
      const issued = await adapter.issue(request);
      clock.advance(900_000 + 5000);
      const mark = fake.requests.length;
      await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, references: issued.references });
      expect(fake.requests.length).to.equal(mark);
      expect(fake.rolePolicy(roleName, POLICY_NAME)).to.equal(undefined);
    });

    it("prunes entries whose credentials have expired whenever it writes", async () => {
      const adapter = awsAdapter();
      const first = issueRequest(clock);
      const firstIssued = await adapter.issue(first);
      await adapter.revoke({
        leaseId: first.leaseId,
        resource: RESOURCE,
        references: firstIssued.references,
      });
      expect(JSON.stringify(denyPolicy())).to.include(first.leaseId);

      clock.advance(31 * MINUTE);
      const second = issueRequest(clock);
      const secondIssued = await adapter.issue(second);
      await adapter.revoke({
        leaseId: second.leaseId,
        resource: RESOURCE,
        references: secondIssued.references,
      });
      const document = JSON.stringify(denyPolicy());
      expect(document).to.include(second.leaseId).and.not.include(first.leaseId);
      expect(denyPolicy().Statement).to.have.length(1);
    });

    it("confirms its write reads back before the next revocation starts from it", async () => {
      const adapter = awsAdapter();
      const first = issueRequest(clock);
      const second = issueRequest(clock);
      await adapter.issue(first);
      await adapter.issue(second);
      // IAM's eventual consistency: the first read after the write still shows no policy.
      fake.staleReadsAfterNextWrite(roleName, POLICY_NAME, 1);
      const mark = fake.requests.length;
      await adapter.revoke({ leaseId: first.leaseId, resource: RESOURCE });
      expect(requestsSince(mark)).to.deep.equal([
        "GetRolePolicy 404",
        "PutRolePolicy 200",
        "GetRolePolicy 404",
        "GetRolePolicy 200",
      ]);
      await adapter.revoke({ leaseId: second.leaseId, resource: RESOURCE });
      const document = JSON.stringify(denyPolicy());
      expect(document).to.include(first.leaseId).and.include(second.leaseId);
    });
  });

  describe("when the deny policy outgrows the role's inline policy quota", () => {
    /** Another team's inline policy leaving exactly 420 of the role's 10,240 characters. */
    function crowdRole(): void {
      const document = (pad: number) =>
        JSON.stringify({
          Version: "2012-10-17",
          Statement: [
            { Effect: "Allow", Action: "s3:GetObject", Resource: `arn:aws:s3:::${"o".repeat(pad)}/*` },
          ],
        });
      fake.setRolePolicy(roleName, "other-team", document(10_240 - 420 - document(0).length));
    }

    it("falls back to denying every session issued before a cut-off when IAM answers LimitExceeded", async () => {
      crowdRole();
      const { logger, lines } = capturingLogger();
      const adapter = awsAdapter({}, { logger });
      const leases: IssueRequest[] = [];
      for (let i = 0; i < 10; i++) {
        const request = issueRequest(clock);
        await adapter.issue(request);
        leases.push(request);
      }
      const live = leases.pop() as IssueRequest;
      for (const request of leases) await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE });

      expect(fake.requests.some((r) => r.errorCode === "LimitExceeded")).to.equal(true);
      const statements = denyPolicy().Statement as { Sid: string; Condition: Record<string, unknown> }[];
      const cutoff = statements.find((s) => s.Sid.startsWith("JitkeyRevokedAllUntil"));
      expect(cutoff?.Condition).to.deep.equal({
        DateLessThan: {
          "aws:TokenIssueTime": new Date(Math.ceil(clock.now() / 1000 + 5) * 1000).toISOString(),
        },
      });
      for (const request of leases) expect(fake.isSessionRefused(sessionOf(request.leaseId))).to.equal(true);
      // The trade-off: a live lease's session issued before the cut-off is refused too.
      expect(fake.isSessionRefused(sessionOf(live.leaseId))).to.equal(true);
      // Sessions issued after the cut-off work, until they are revoked in turn.
      clock.advance(6000);
      const later = issueRequest(clock);
      await adapter.issue(later);
      expect(fake.isSessionRefused(sessionOf(later.leaseId))).to.equal(false);
      await adapter.revoke({ leaseId: later.leaseId, resource: RESOURCE });
      expect(fake.isSessionRefused(sessionOf(later.leaseId))).to.equal(true);
      // ... by a lease entry next to the cut-off, which still fits.
      const sids = (denyPolicy().Statement as { Sid: string }[]).map((s) => s.Sid);
      expect(sids.map((sid) => sid.replace(/\d+$/, ""))).to.deep.equal([
        "JitkeyRevokedAllUntil",
        "JitkeyRevokedLeasesUntil",
      ]);
      expect(JSON.stringify(denyPolicy())).to.include(later.leaseId);
      expect(lines.join("\n")).to.include("denying every older session");
    });

    it("falls back on its own size budget before IAM refuses, and prunes the cut-off later", async () => {
      const adapter = awsAdapter({ revocationPolicyMaxChars: 1024 });
      const leases: IssueRequest[] = [];
      for (let i = 0; i < 30; i++) {
        const request = issueRequest(clock);
        const issued = await adapter.issue(request);
        leases.push(request);
        await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, references: issued.references });
      }
      expect(fake.requests.some((r) => r.errorCode === "LimitExceeded")).to.equal(false);
      expect(JSON.stringify(denyPolicy())).to.include("aws:TokenIssueTime");
      expect(fake.rolePolicy(roleName, POLICY_NAME)?.length).to.be.at.most(1024);
      for (const request of leases) expect(fake.isSessionRefused(sessionOf(request.leaseId))).to.equal(true);

      // An hour and a bit later every session issued before the cut-off has expired.
      clock.advance(3600_000 + 20_000);
      const next = issueRequest(clock);
      const issued = await adapter.issue(next);
      await adapter.revoke({ leaseId: next.leaseId, resource: RESOURCE, references: issued.references });
      const document = JSON.stringify(denyPolicy());
      expect(document).to.not.include("aws:TokenIssueTime");
      expect(document).to.include(next.leaseId);
    });
  });

  describe("concurrent revocations", () => {
    let redis: Redis[];
    let prefix: string;

    beforeEach(() => {
      redis = [testRedis(), testRedis(), testRedis()];
      prefix = uniquePrefix("aws-locks");
    });

    afterEach(async () => {
      await deletePrefix(redis[0] as Redis, prefix);
      await Promise.all(redis.map((client) => client.quit()));
    });

    /** Three adapters, as three broker processes would have, with locks on their own connections. */
    function adapters(shareLocks: boolean): CredentialAdapter[] {
      return redis.map((client, index) =>
        awsAdapter(
          {},
          {
            logger: capturingLogger().logger,
            locks: new RedisLocks(client, (name) => `${prefix}:${shareLocks ? "" : index}:lock:${name}`),
          },
        ),
      );
    }

    async function revokeConcurrently(instances: CredentialAdapter[], count: number): Promise<string[]> {
      const leaseIds = Array.from({ length: count }, () => newTestLeaseId());
      // Slow reads widen the read-modify-write window.
      fake.injectFault({ action: "GetRolePolicy", delayMs: 10, times: 1000 });
      await Promise.all(
        leaseIds.map((leaseId, i) =>
          instances[i % instances.length]?.revoke({ leaseId, resource: RESOURCE }),
        ),
      );
      return leaseIds;
    }

    it("lose no entry when the adapters share Redis locks", async () => {
      const leaseIds = await revokeConcurrently(adapters(true), 12);
      const document = JSON.stringify(denyPolicy());
      for (const leaseId of leaseIds) expect(document).to.include(leaseId);
    });

    it("would lose entries without a shared lock (why the lock is there)", async () => {
      const leaseIds = await revokeConcurrently(adapters(false), 12);
      const document = JSON.stringify(denyPolicy());
      expect(leaseIds.filter((leaseId) => !document.includes(leaseId))).to.not.be.empty;
    });

    it("treats a lock it cannot take as transient", async () => {
      const adapter = awsAdapter(
        {},
        {
          locks: {
            withLock: async () => {
              throw new Error("lock aws:x is busy");
            },
          },
        },
      );
      const error = await expectAdapterError<AwsRequestError>(
        adapter.revoke({ leaseId: newTestLeaseId(), resource: RESOURCE }),
      );
      expect(error.permanent).to.equal(false);
    });
  });

  describe("errors", () => {
    const injected = async (action: string, code: string, status: number) => {
      fake.injectFault({ action, code, status });
      const adapter = awsAdapter();
      return action === "AssumeRole"
        ? expectAdapterError(adapter.issue(issueRequest(clock)))
        : expectAdapterError(adapter.revoke({ leaseId: newTestLeaseId(), resource: RESOURCE }));
    };

    for (const [action, code, status] of [
      ["AssumeRole", "AccessDenied", 403],
      ["AssumeRole", "MalformedPolicyDocument", 400],
      ["AssumeRole", "ValidationError", 400],
      ["AssumeRole", "NoSuchEntity", 404],
      ["AssumeRole", "RegionDisabledException", 403],
      ["PutRolePolicy", "MalformedPolicyDocument", 400],
      ["PutRolePolicy", "UnmodifiableEntity", 400],
    ] as const) {
      it(`maps ${code} on ${action} to a permanent error`, async () => {
        const error = await injected(action, code, status);
        expect(error).to.include({ permanent: true, status, code: code.replace(/Exception$/, "") });
      });
    }

    for (const [action, code, status] of [
      ["AssumeRole", "Throttling", 400],
      ["AssumeRole", "ServiceUnavailable", 503],
      ["AssumeRole", "InternalFailure", 500],
      ["GetRolePolicy", "Throttling", 400],
      ["PutRolePolicy", "ServiceFailure", 500],
      ["PutRolePolicy", "EntityTemporarilyUnmodifiable", 409],
    ] as const) {
      it(`maps ${code} on ${action} to a transient error`, async () => {
        const error = await injected(action, code, status);
        expect(error).to.include({ permanent: false, status, code });
      });
    }

    it("maps the fake's own refusals: an untrusted broker and a duration over the role's maximum", async () => {
      const stranger = fake.addPrincipal("stranger");
      const untrusted = awsAdapter({
        credentials: { accessKeyId: stranger.accessKeyId, secretAccessKey: stranger.secretAccessKey },
      });
      expect(await expectAdapterError<AwsRequestError>(untrusted.issue(issueRequest(clock)))).to.include({
        permanent: true,
        code: "AccessDenied",
      });
      const tooLong = awsAdapter({ maxSessionDurationSeconds: 7200 });
      expect(await expectAdapterError<AwsRequestError>(tooLong.issue(issueRequest(clock, 5000)))).to.include({
        permanent: true,
        code: "ValidationError",
      });
    });

    it("fails revoke permanently when the broker may not write the role's policy", async () => {
      const limited = fake.addPrincipal("limited", { deniedActions: ["iam:PutRolePolicy"] });
      const adapter = awsAdapter({
        credentials: { accessKeyId: limited.accessKeyId, secretAccessKey: limited.secretAccessKey },
      });
      const error = await expectAdapterError<AwsRequestError>(
        adapter.revoke({ leaseId: newTestLeaseId(), resource: RESOURCE }),
      );
      expect(error).to.include({ permanent: true, code: "AccessDenied", status: 403 });
    });

    it("fails issue permanently when the broker may not tag sessions", async () => {
      const untagged = fake.addPrincipal("untagged", { deniedActions: ["sts:TagSession"] });
      const trusting = fake.addRole(`open-${randomBytes(3).toString("hex")}`);
      const adapter = awsAdapter({
        roleArn: trusting,
        credentials: { accessKeyId: untagged.accessKeyId, secretAccessKey: untagged.secretAccessKey },
      });
      expect(await expectAdapterError<AwsRequestError>(adapter.issue(issueRequest(clock)))).to.include({
        permanent: true,
        code: "AccessDenied",
      });
    });

    it("treats an unreachable endpoint and a timeout as transient", async () => {
      const down = awsAdapter({ endpoint: `http://127.0.0.1:${await closedPort()}` });
      const refused = await expectAdapterError<AwsRequestError>(down.issue(issueRequest(clock)));
      expect(refused).to.include({ permanent: false, code: "ECONNREFUSED" });

      fake.injectFault({ action: "AssumeRole", delayMs: 400 });
      const slow = awsAdapter({ requestTimeoutMs: 100 });
      expect((await expectAdapterError<AwsRequestError>(slow.issue(issueRequest(clock)))).permanent).to.equal(
        false,
      );

      fake.injectFault({ action: "PutRolePolicy", dropConnection: true });
      const cut = await expectAdapterError<AwsRequestError>(
        awsAdapter().revoke({ leaseId: newTestLeaseId(), resource: RESOURCE }),
      );
      expect(cut.permanent).to.equal(false);
    });

    it("lets the SDK retry a transient failure within one call", async () => {
      fake.injectFault({ action: "AssumeRole", code: "ServiceUnavailable", status: 503, times: 2 });
      const adapter = awsAdapter({ maxAttempts: 3 });
      const request = issueRequest(clock);
      await adapter.issue(request);
      expect(fake.requests.filter((r) => r.action === "AssumeRole").map((r) => r.status)).to.deep.equal([
        503, 503, 200,
      ]);
    });

    it("reports health from GetCallerIdentity, with a secret-free detail when it fails", async () => {
      expect(await awsAdapter().health()).to.deep.equal({ ok: true });
      const wrongSecret = `${broker.secretAccessKey.slice(0, -4)}AAAA`;
      const health = await awsAdapter({
        credentials: { accessKeyId: broker.accessKeyId, secretAccessKey: wrongSecret },
      }).health();
      expect(health.ok).to.equal(false);
      expect(health.detail).to.include("SignatureDoesNotMatch").and.not.include(wrongSecret);
    });

    it("never puts a secret in an error or a log line", async () => {
      const { logger, lines } = capturingLogger();
      const adapter = awsAdapter({ revocationPolicyMaxChars: 1024 }, { logger });
      const issuedSecrets: string[] = [];
      for (let i = 0; i < 30; i++) {
        const request = issueRequest(clock);
        const { credential, references } = await adapter.issue(request);
        issuedSecrets.push(String(credential.secretAccessKey), String(credential.sessionToken));
        await adapter.revoke({ leaseId: request.leaseId, resource: RESOURCE, references });
      }
      // AWS texts may echo request data: an error message repeating the broker's secret is redacted.
      fake.injectFault({
        action: "AssumeRole",
        code: "ValidationError",
        status: 400,
        message: `bad signature for ${broker.secretAccessKey}`,
      });
      const error = await expectAdapterError<AwsRequestError>(adapter.issue(issueRequest(clock)));
      const secrets = [broker.secretAccessKey, ...issuedSecrets];
      expect(lines.join("\n")).to.include("denying every older session");
      for (const text of [error.message, String(error.cause ?? ""), lines.join("\n")]) {
        for (const secret of secrets) expect(text).to.not.include(secret);
      }
      expect(error.message).to.include("[redacted]");
    });
  });
});
