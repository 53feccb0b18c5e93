import { randomBytes } from "node:crypto";
import { expect } from "chai";
import type { CredentialAdapter, IssuedCredential, IssueRequest } from "../../adapters/types.ts";

/** What an adapter's test file hands the conformance suite. */
export interface ConformanceSubject {
  readonly adapter: CredentialAdapter;
  /** The configured resource name the adapter is bound to. */
  readonly resource: string;
  /** Scopes to request; must be valid for the resource. */
  readonly scopes: string[];
  /**
   * Names of what exists in the backend for this lease right now (roles, tokens, leases),
   * looked up in the backend itself, not from the adapter. Empty when nothing is live.
   */
  findCreated(leaseId: string, issued?: IssuedCredential): Promise<string[]>;
  /** Credential fields that are not secret and may appear in the handle (e.g. a database username). */
  readonly publicFields?: readonly string[];
  /** Removes whatever the suite left behind. */
  cleanup?(): Promise<void>;
}

/** A fresh lease id shaped like the broker's. */
export function newTestLeaseId(): string {
  return `lse_${randomBytes(16).toString("base64url")}`;
}

function issueRequest(subject: ConformanceSubject, leaseId: string, ttlSeconds = 120): IssueRequest {
  return {
    leaseId,
    taskId: `tsk_${randomBytes(8).toString("base64url")}`,
    agentId: "conformance:agent",
    resource: subject.resource,
    scopes: subject.scopes,
    expiresAt: new Date(Math.floor(Date.now() / 1000 + ttlSeconds) * 1000),
  };
}

/**
 * The behaviour every adapter must show. Call it from the adapter's own test file:
 * `describeAdapterConformance("jwt", async () => ({ adapter, resource, scopes, findCreated }))`.
 */
export function describeAdapterConformance(name: string, setup: () => Promise<ConformanceSubject>): void {
  describe(`adapter conformance: ${name}`, () => {
    let subject: ConformanceSubject;

    before(async () => {
      subject = await setup();
    });

    after(async () => {
      await subject?.cleanup?.();
      await subject?.adapter.close?.();
    });

    it("issues a credential that does not outlive the lease", async () => {
      const request = issueRequest(subject, newTestLeaseId(), 60);
      const issued = await subject.adapter.issue(request);
      expect(issued.credential.type).to.be.a("string").and.not.be.empty;
      const credentialExpiry = Date.parse(issued.credential.expiresAt);
      expect(credentialExpiry).to.be.at.most(request.expiresAt.getTime());
      expect(credentialExpiry).to.be.greaterThan(Date.now());
      await subject.adapter.revoke({
        leaseId: request.leaseId,
        resource: subject.resource,
        handle: issued.handle,
      });
    });

    it("names what it creates after the lease id", async () => {
      const request = issueRequest(subject, newTestLeaseId());
      const issued = await subject.adapter.issue(request);
      const created = await subject.findCreated(request.leaseId, issued);
      expect(created, "something must be found for the lease").to.not.be.empty;
      for (const artifact of created) expect(artifact).to.include(request.leaseId);
      await subject.adapter.revoke({
        leaseId: request.leaseId,
        resource: subject.resource,
        handle: issued.handle,
      });
    });

    it("keeps no secret in the handle", async () => {
      const request = issueRequest(subject, newTestLeaseId());
      const issued = await subject.adapter.issue(request);
      const secrets = Object.entries(issued.credential)
        .filter(
          ([field, value]) =>
            typeof value === "string" &&
            !["type", "expiresAt", ...(subject.publicFields ?? [])].includes(field),
        )
        .map(([, value]) => value as string)
        .filter((value) => value.length >= 8);
      if (issued.handle) for (const secret of secrets) expect(issued.handle).to.not.include(secret);
      await subject.adapter.revoke({
        leaseId: request.leaseId,
        resource: subject.resource,
        handle: issued.handle,
      });
    });

    it("revokes idempotently", async () => {
      const request = issueRequest(subject, newTestLeaseId());
      const issued = await subject.adapter.issue(request);
      const revoke = {
        leaseId: request.leaseId,
        resource: subject.resource,
        handle: issued.handle,
        references: issued.references,
      };
      await subject.adapter.revoke(revoke);
      await subject.adapter.revoke(revoke);
      if (subject.adapter.capabilities.revocation === "backend") {
        expect(await subject.findCreated(request.leaseId, issued)).to.deep.equal([]);
      }
    });

    it("revokes by lease id alone when the handle was never recorded", async () => {
      if (subject.adapter.capabilities.revocation !== "backend") {
        // Nothing lives in a backend, so there is nothing to find by name.
        expect(subject.adapter.capabilities.revocation).to.be.oneOf(["introspection", "none"]);
        return;
      }
      const request = issueRequest(subject, newTestLeaseId());
      const issued = await subject.adapter.issue(request);
      await subject.adapter.revoke({ leaseId: request.leaseId, resource: subject.resource });
      expect(await subject.findCreated(request.leaseId, issued)).to.deep.equal([]);
    });

    it("succeeds revoking a lease that was never issued", async () => {
      await subject.adapter.revoke({ leaseId: newTestLeaseId(), resource: subject.resource });
    });

    it("reports health", async () => {
      const health = await subject.adapter.health();
      expect(health.ok, health.detail).to.equal(true);
    });
  });
}
