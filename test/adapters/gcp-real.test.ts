import { randomBytes } from "node:crypto";
import { expect } from "chai";
import { GoogleAuth } from "google-auth-library";
import { createGcpAdapter } from "../../adapters/gcp/gcp-adapter.ts";
import { newTestLeaseId } from "../conformance/adapter-conformance.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";

const CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform";

describe("gcp adapter against real Google (JITKEY_TEST_GCP_SERVICE_ACCOUNT, Application Default Credentials)", () => {
  const serviceAccount = process.env.JITKEY_TEST_GCP_SERVICE_ACCOUNT;

  before(async function () {
    if (!serviceAccount) {
      console.log(
        "    skipped: JITKEY_TEST_GCP_SERVICE_ACCOUNT is not set (the fake-backed gcp suite always runs)",
      );
      this.skip();
    }
    this.timeout(30_000);
    try {
      await new GoogleAuth({ scopes: [CLOUD_PLATFORM] }).getAccessToken();
    } catch {
      console.log("    skipped: no Application Default Credentials (gcloud auth application-default login)");
      this.skip();
    }
  });

  it("mints a token for the service account that Google accepts, living no longer than the lease", async function () {
    this.timeout(30_000);
    const adapter = createGcpAdapter(
      { serviceAccount, scopes: { read: [CLOUD_PLATFORM] }, maxTtlSeconds: 300 },
      testAdapterContext({ resource: "gcp-real" }),
    );
    try {
      const leaseId = newTestLeaseId();
      const expiresAt = new Date(Math.floor(Date.now() / 1000 + 120) * 1000);
      const issued = await adapter.issue({
        leaseId,
        taskId: `tsk_${randomBytes(8).toString("base64url")}`,
        agentId: "test:gcp-real",
        resource: "gcp-real",
        scopes: ["read"],
        expiresAt,
      });
      expect(Date.parse(issued.credential.expiresAt)).to.be.at.most(expiresAt.getTime());
      // Google's tokeninfo endpoint; the token goes in the body, never in a URL.
      const response = await fetch("https://oauth2.googleapis.com/tokeninfo", {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ access_token: String(issued.credential.accessToken) }),
      });
      const info = (await response.json()) as { email?: string; expires_in?: string };
      expect(info.email).to.equal(serviceAccount);
      expect(Number(info.expires_in)).to.be.within(1, 120);
      await adapter.revoke({ leaseId, resource: "gcp-real" });
      expect(await adapter.health()).to.deep.equal({ ok: true });
    } finally {
      await adapter.close?.();
    }
  });
});
