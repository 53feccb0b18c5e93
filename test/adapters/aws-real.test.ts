import { randomBytes } from "node:crypto";
import { GetRoleCommand, GetRolePolicyCommand, IAMClient } from "@aws-sdk/client-iam";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { expect } from "chai";
import { createAwsAdapter } from "../../adapters/aws/aws-adapter.ts";
import { roleNameOf } from "../../adapters/aws/aws-options.ts";
import type { CredentialAdapter } from "../../adapters/types.ts";
import { newTestLeaseId } from "../conformance/adapter-conformance.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";

/**
 * Opt-in: runs against real AWS when JITKEY_TEST_AWS_ROLE_ARN names a role the broker's
 * credentials (the SDK's default chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
 * ...) may assume with sts:TagSession and sts:SetSourceIdentity, and whose inline policies they
 * may read and write. Set up as in docs/aws.md. The deny entry it leaves on the role expires with
 * the test's session and is pruned by the next revocation.
 */
describe("aws adapter against real AWS (JITKEY_TEST_AWS_ROLE_ARN)", function () {
  this.timeout(120_000);
  const roleArn = process.env.JITKEY_TEST_AWS_ROLE_ARN;
  const region = process.env.JITKEY_TEST_AWS_REGION ?? process.env.AWS_REGION ?? "us-east-1";
  let adapter: CredentialAdapter;

  before(function () {
    if (!roleArn) {
      console.log("    skipped: JITKEY_TEST_AWS_ROLE_ARN is not set (the fake-backed aws suite always runs)");
      this.skip();
    }
    adapter = createAwsAdapter(
      {
        roleArn,
        region,
        // The one scope lets the session read its own role: the probe that shows revocation.
        scopes: { probe: [{ Effect: "Allow", Action: "iam:GetRole", Resource: roleArn }] },
      },
      testAdapterContext({ resource: "aws-real" }),
    );
  });

  after(async () => {
    await adapter?.close?.();
  });

  it("reports health with the broker's own credentials", async () => {
    expect(await adapter.health()).to.deep.equal({ ok: true });
  });

  it("issues a session named after the lease and denies it once revoked", async () => {
    const leaseId = newTestLeaseId();
    const issued = await adapter.issue({
      leaseId,
      taskId: `tsk_${randomBytes(8).toString("base64url")}`,
      agentId: "jitkey-test:real-aws",
      resource: "aws-real",
      scopes: ["probe"],
      expiresAt: new Date(Date.now() + 60_000),
    });
    const credentials = {
      accessKeyId: String(issued.credential.accessKeyId),
      secretAccessKey: String(issued.credential.secretAccessKey),
      sessionToken: String(issued.credential.sessionToken),
    };
    const sts = new STSClient({ region, credentials });
    const iamAsSession = new IAMClient({ region, credentials, maxAttempts: 1 });
    const iamAsBroker = new IAMClient({ region });
    const roleName = roleNameOf(roleArn ?? "");
    const probe = () =>
      iamAsSession.send(new GetRoleCommand({ RoleName: roleName })).then(
        () => "allowed",
        (error: Error) => error.name,
      );
    try {
      const identity = await sts.send(new GetCallerIdentityCommand({}));
      expect(identity.Arn).to.match(new RegExp(`:assumed-role/${roleName}/${leaseId}$`));
      const before = await probe();

      await adapter.revoke({
        leaseId,
        resource: "aws-real",
        handle: issued.handle,
        references: issued.references,
      });
      const policy = await iamAsBroker.send(
        new GetRolePolicyCommand({ RoleName: roleName, PolicyName: "jitkey-revoked-sessions" }),
      );
      expect(decodeURIComponent(policy.PolicyDocument ?? "")).to.include(leaseId);

      if (before !== "allowed") {
        console.log(`      (denial probe skipped: the role does not allow iam:GetRole on itself: ${before})`);
        return;
      }
      // IAM changes take a few seconds to reach every endpoint.
      let after = before;
      for (let waited = 0; after === "allowed" && waited < 60_000; waited += 2000) {
        await new Promise((resolve) => setTimeout(resolve, 2000));
        after = await probe();
      }
      expect(after).to.equal("AccessDenied");
    } finally {
      sts.destroy();
      iamAsSession.destroy();
      iamAsBroker.destroy();
    }
  });
});
