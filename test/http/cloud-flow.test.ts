import { randomBytes } from "node:crypto";
import { expect } from "chai";
import { OAuth2Client } from "google-auth-library";
import { createAwsAdapter } from "../../adapters/aws/aws-adapter.ts";
import { createGcpAdapter } from "../../adapters/gcp/gcp-adapter.ts";
import type { CredentialAdapter } from "../../adapters/types.ts";
import { ManualClock } from "../../broker/clock.ts";
import { FakeAwsServer } from "../fakes/aws-fake/fake-aws-server.ts";
import { FakeGcpServer } from "../fakes/gcp-fake/fake-gcp-server.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";
import { startTestBroker, type TestBroker } from "../helpers/broker.ts";
import { agentSession, createTask, leaseReaches, mintLease } from "../helpers/flows.ts";
import { testRedis } from "../helpers/redis.ts";

const READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only";
const TARGET = "reports-reader@acme-prod.iam.gserviceaccount.com";

/** The broker with an `aws` and a `gcp` resource, each adapter on its in-repo fake, on one manual clock. */
describe("cloud resources through the broker: what each backend can and cannot revoke", function () {
  this.timeout(30_000);
  let t: TestBroker;
  let clock: ManualClock;
  let aws: FakeAwsServer;
  let gcp: FakeGcpServer;
  let roleName: string;
  const redis = testRedis();
  const adapters: CredentialAdapter[] = [];

  before(async () => {
    clock = new ManualClock(Math.floor(Date.now() / 1000) * 1000);
    aws = await FakeAwsServer.start({ region: "eu-west-1", clock });
    const principal = aws.addPrincipal("jitkey-broker");
    roleName = `jitkey-${randomBytes(3).toString("hex")}`;
    const roleArn = aws.addRole(roleName, { trustedPrincipalArns: [principal.arn] });
    gcp = await FakeGcpServer.start({ clock });
    const brokerToken = `ya29.${randomBytes(12).toString("hex")}`;
    gcp.addCaller(brokerToken, "serviceAccount:jitkey@acme-prod.iam.gserviceaccount.com");
    gcp.addServiceAccount({
      email: TARGET,
      tokenCreators: ["serviceAccount:jitkey@acme-prod.iam.gserviceaccount.com"],
    });
    const authClient = new OAuth2Client();
    authClient.setCredentials({ access_token: brokerToken, expiry_date: Date.now() + 3_600_000 });
    adapters.push(
      createAwsAdapter(
        {
          roleArn,
          region: "eu-west-1",
          endpoint: aws.endpoint,
          credentials: { accessKeyId: principal.accessKeyId, secretAccessKey: principal.secretAccessKey },
          scopes: { read: [{ Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::reports/*" }] },
        },
        testAdapterContext({ resource: "reports-s3", scopes: ["read"], clock, redis }),
      ),
      createGcpAdapter(
        { serviceAccount: TARGET, scopes: { read: [READ_ONLY] }, apiEndpoint: gcp.address },
        testAdapterContext({ resource: "reports-gcs", scopes: ["read"], clock }),
        { authClient },
      ),
    );
    t = await startTestBroker({
      name: "cloud-flow",
      clock,
      adapters: new Map([
        ["reports-s3", adapters[0] as CredentialAdapter],
        ["reports-gcs", adapters[1] as CredentialAdapter],
      ]),
      config: (raw) => {
        const resource = (name: string, adapter: string) => ({
          name,
          adapter,
          classification: "internal",
          scopes: ["read"],
          maxTtlSeconds: 900,
          options: {},
        });
        (raw.resources as unknown[]).push(resource("reports-s3", "aws"), resource("reports-gcs", "gcp"));
        (raw.policies as unknown[]).unshift({
          name: "cloud",
          agents: ["ci:agent-*"],
          resources: ["reports-s3", "reports-gcs"],
          scopes: ["read"],
          maxClassification: "internal",
          autoApprove: true,
          maxTtlSeconds: 900,
        });
      },
    });
  });
  after(async () => {
    await t.close();
    await aws.stop();
    await gcp.stop();
    redis.disconnect();
  });

  it("revokes a 60 s AWS lease at its own expiry, although STS issued the session for 900 s", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { resources: [{ resource: "reports-s3", scopes: ["read"] }] });
    const { lease, credential } = await mintLease(t, agent, taskId, {
      resource: "reports-s3",
      ttlSeconds: 60,
    });
    expect(lease).to.include({ revocable: true, revocation: "backend" });
    expect(credential).to.include({ type: "aws", expiresAt: lease.expiresAt });
    const session = aws.sessions().find((s) => s.tags["jitkey-lease"] === lease.id);
    expect(session).to.not.equal(undefined);
    expect((session?.expiresAt.getTime() ?? 0) - clock.now()).to.be.at.least(899_000);
    expect(aws.isSessionRefused(session as NonNullable<typeof session>)).to.equal(false);

    clock.advance(61_000);
    await t.broker.sweeper.sweepOnce();
    const revoked = await leaseReaches(t, lease.id, "revoked");
    expect(revoked.revokeReason).to.equal("expired");
    // The session still has 839 s of STS life left, and the role's deny policy refuses it now.
    expect(aws.isSessionRefused(session as NonNullable<typeof session>)).to.equal(true);
  });

  it("caps a GCP lease at what the adapter hands out, says it is not revocable, and still ends it on release", async () => {
    const agent = await agentSession(t);
    const taskId = await createTask(t, agent, { resources: [{ resource: "reports-gcs", scopes: ["read"] }] });
    const { lease, credential } = await mintLease(t, agent, taskId, { resource: "reports-gcs" });
    // The rule and the resource allow 900 s; a token nothing can revoke gets 600 s at most.
    expect(Date.parse(lease.expiresAt) - Date.parse(lease.issuedAt)).to.equal(600_000);
    expect(lease).to.include({ revocable: false, revocation: "none" });
    expect(credential).to.include({ type: "gcp" });
    const over = await t.http
      .post(`/v1/tasks/${taskId}/leases`)
      .set(agent.headers)
      .send({ resource: "reports-gcs", ttlSeconds: 601 })
      .expect(403);
    expect(over.body.error.code).to.equal("policy_denied");
    await t.http.delete(`/v1/leases/${lease.id}`).set(agent.headers).expect(202);
    expect((await leaseReaches(t, lease.id, "revoked")).revokeReason).to.equal("released");
  });
});
