import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import {
  AdapterError,
  type CredentialAdapter,
  type IssuedCredential,
  type IssueRequest,
  type RenewRequest,
  type RevokeRequest,
} from "../../adapters/types.ts";

/**
 * A test adapter whose "backend" is real Redis: issuing writes a key named after the lease
 * id holding a random secret, revoking deletes it. Tests switch on failures to drive the
 * crash and retry paths; it is not a fake of any real service.
 */
export class RecordingAdapter implements CredentialAdapter {
  readonly kind = "recording";
  /** Whether it extends credentials (`renew`); off unless a test turns it on. */
  renewable = false;
  get capabilities() {
    return { revocation: "backend", renewable: this.renewable } as const;
  }
  /** Every renew request, for assertions. */
  readonly renewals: RenewRequest[] = [];
  issueCalls = 0;
  revokeCalls = 0;
  /** Revoke calls per lease id, to tell a revocation done once from one done twice. */
  readonly revokeCallsByLease = new Map<string, number>();
  /** Fail issuing before or after creating the artifact. */
  failIssue: "before-create" | "after-create" | undefined;
  /** How many revoke calls fail (transiently) before they succeed. */
  revokeFailures = 0;
  /** Every revoke fails permanently. */
  revokePermanent = false;
  /** While set, revoke waits on it: a worker can be killed mid-revoke. */
  revokeGate: Promise<void> | undefined;
  /** When set, the "backend" grants only this many seconds, shorter than the lease asked for. */
  grantSeconds: number | undefined;
  /** Called inside issue, before anything is created: tests inspect broker state there. */
  onIssue: ((request: IssueRequest) => Promise<void>) | undefined;
  /** Every secret handed out, to search Redis and logs for. */
  readonly secrets: string[] = [];

  constructor(
    private readonly redis: Redis,
    readonly namespace: string,
  ) {}

  artifactKey(leaseId: string): string {
    return `${this.namespace}:artifact:${leaseId}`;
  }

  async issue(request: IssueRequest): Promise<IssuedCredential> {
    this.issueCalls += 1;
    await this.onIssue?.(request);
    if (this.failIssue === "before-create") throw new AdapterError("backend refused to create");
    const secret = `rec-secret-${randomBytes(16).toString("hex")}`;
    this.secrets.push(secret);
    const ttlMs = Math.max(1, request.expiresAt.getTime() - Date.now());
    // The artifact's name carries the lease id; its value stands in for the backend's secret.
    await this.redis.set(
      this.artifactKey(request.leaseId),
      JSON.stringify({ secret, scopes: request.scopes }),
      "PX",
      ttlMs + 3_600_000,
    );
    if (this.failIssue === "after-create") throw new AdapterError("backend failed after creating");
    const granted =
      this.grantSeconds === undefined
        ? request.expiresAt
        : new Date(
            Math.min(request.expiresAt.getTime(), Math.floor(Date.now() / 1000 + this.grantSeconds) * 1000),
          );
    return {
      credential: {
        type: "recording",
        username: `u-${request.leaseId}`,
        password: secret,
        expiresAt: granted.toISOString(),
      },
      handle: `artifact/${request.leaseId}`,
      ...(this.grantSeconds === undefined ? {} : { expiresAt: granted }),
    };
  }

  async revoke(request: RevokeRequest): Promise<void> {
    this.revokeCalls += 1;
    this.revokeCallsByLease.set(request.leaseId, (this.revokeCallsByLease.get(request.leaseId) ?? 0) + 1);
    if (this.revokeGate) await this.revokeGate;
    if (this.revokePermanent) throw new AdapterError("permission denied by backend", { permanent: true });
    if (this.revokeFailures > 0) {
      this.revokeFailures -= 1;
      throw new AdapterError("backend timed out");
    }
    await this.redis.del(this.artifactKey(request.leaseId));
  }

  async renew(request: RenewRequest): Promise<{ expiresAt: Date }> {
    this.renewals.push(request);
    return { expiresAt: request.expiresAt };
  }

  async health() {
    return { ok: true };
  }

  /** Lease ids that still have an artifact. */
  async liveArtifacts(): Promise<string[]> {
    const keys = await this.redis.keys(`${this.namespace}:artifact:*`);
    return keys.map((key) => key.slice(`${this.namespace}:artifact:`.length));
  }
}
