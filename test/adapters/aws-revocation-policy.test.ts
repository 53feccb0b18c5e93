import { expect } from "chai";
import {
  addRevokedLease,
  BUCKET_SECONDS,
  parseRevocationPolicy,
  policySize,
  pruneExpired,
  type RevocationTiming,
  revokeAllIssuedBefore,
  serialiseRevocationPolicy,
} from "../../adapters/aws/revocation-policy.ts";
import { fitSessionName, fitTagValue, sessionIdentity } from "../../adapters/aws/session-identity.ts";
import { leaseSessionPolicy } from "../../adapters/aws/session-policy.ts";

/** 2030-01-01T00:00:00Z, on a bucket boundary. */
const T0 = Date.UTC(2030, 0, 1) - (Date.UTC(2030, 0, 1) % (BUCKET_SECONDS * 1000));
const MINUTE = 60_000;

function timing(nowMs: number, overrides: Partial<RevocationTiming> = {}): RevocationTiming {
  return { nowMs, clockSkewSeconds: 5, maxSessionSeconds: 3600, ...overrides };
}

function statementsOf(document: string | undefined): Record<string, unknown>[] {
  return (JSON.parse(document ?? "{}") as { Statement?: Record<string, unknown>[] }).Statement ?? [];
}

describe("aws revocation policy document", () => {
  it("puts each lease in the bucket that ends after its credential's expiry plus the skew allowance", () => {
    const state = parseRevocationPolicy(undefined);
    expect(addRevokedLease(state, "lse_a", T0 + 10 * MINUTE, timing(T0))).to.equal(true);
    expect(addRevokedLease(state, "lse_b", T0 + 14 * MINUTE, timing(T0))).to.equal(true);
    // 14:57 + 5 s skew crosses the 15-minute boundary.
    expect(addRevokedLease(state, "lse_c", T0 + 15 * MINUTE - 3000, timing(T0))).to.equal(true);
    const end1 = T0 / 1000 + BUCKET_SECONDS;
    const end2 = T0 / 1000 + 2 * BUCKET_SECONDS;
    expect(statementsOf(serialiseRevocationPolicy(state))).to.deep.equal([
      {
        Sid: `JitkeyRevokedLeasesUntil${end1}`,
        Effect: "Deny",
        Action: "*",
        Resource: "*",
        Condition: { StringEquals: { "aws:PrincipalTag/jitkey-lease": ["lse_a", "lse_b"] } },
      },
      {
        Sid: `JitkeyRevokedLeasesUntil${end2}`,
        Effect: "Deny",
        Action: "*",
        Resource: "*",
        Condition: { StringEquals: { "aws:PrincipalTag/jitkey-lease": ["lse_c"] } },
      },
    ]);
  });

  it("round-trips through its own serialisation", () => {
    const state = parseRevocationPolicy(undefined);
    addRevokedLease(state, "lse_a", T0 + 10 * MINUTE, timing(T0));
    addRevokedLease(state, "lse_b", T0 + 50 * MINUTE, timing(T0));
    revokeAllIssuedBefore(state, timing(T0));
    addRevokedLease(state, "lse_c", T0 + 60 * MINUTE, timing(T0 + 5 * MINUTE));
    const document = serialiseRevocationPolicy(state);
    expect(serialiseRevocationPolicy(parseRevocationPolicy(document))).to.equal(document);
  });

  it("changes nothing when the lease already has an entry that lasts long enough", () => {
    const state = parseRevocationPolicy(undefined);
    addRevokedLease(state, "lse_a", T0 + 40 * MINUTE, timing(T0));
    expect(addRevokedLease(state, "lse_a", T0 + 10 * MINUTE, timing(T0))).to.equal(false);
    expect(addRevokedLease(state, "lse_a", T0 + 40 * MINUTE, timing(T0))).to.equal(false);
  });

  it("moves a lease to a later bucket when a later expiry is learned", () => {
    const state = parseRevocationPolicy(undefined);
    addRevokedLease(state, "lse_a", T0 + 10 * MINUTE, timing(T0));
    expect(addRevokedLease(state, "lse_a", T0 + 40 * MINUTE, timing(T0))).to.equal(true);
    const statements = statementsOf(serialiseRevocationPolicy(state));
    expect(statements).to.have.length(1);
    expect(statements[0]?.Sid).to.equal(`JitkeyRevokedLeasesUntil${T0 / 1000 + 3 * BUCKET_SECONDS}`);
  });

  it("prunes buckets whose credentials have all expired, and keeps the rest", () => {
    const state = parseRevocationPolicy(undefined);
    addRevokedLease(state, "lse_old", T0 + 10 * MINUTE, timing(T0));
    addRevokedLease(state, "lse_new", T0 + 40 * MINUTE, timing(T0));
    expect(pruneExpired(state, T0 + 14 * MINUTE)).to.equal(false);
    expect(pruneExpired(state, T0 + 15 * MINUTE)).to.equal(true);
    const document = serialiseRevocationPolicy(state) ?? "";
    expect(document).to.include("lse_new").and.not.include("lse_old");
    expect(pruneExpired(state, T0 + 45 * MINUTE)).to.equal(true);
    expect(serialiseRevocationPolicy(state)).to.equal(undefined);
  });

  it("falls back to one TokenIssueTime cut-off that outlasts every dropped entry", () => {
    const state = parseRevocationPolicy(undefined);
    addRevokedLease(state, "lse_a", T0 + 10 * MINUTE, timing(T0));
    addRevokedLease(state, "lse_b", T0 + 100 * MINUTE, timing(T0));
    const now = T0 + 2 * MINUTE + 400;
    revokeAllIssuedBefore(state, timing(now));
    const statements = statementsOf(serialiseRevocationPolicy(state));
    // The cut-off is now + 5 s skew, rounded up to a whole second.
    const cutoff = new Date(Math.ceil(now / 1000 + 5) * 1000).toISOString();
    // lse_b's bucket (105 min) outlasts cut-off + max session (62 min + 5 s + 5 s).
    const until = T0 / 1000 + 7 * BUCKET_SECONDS;
    expect(statements).to.deep.equal([
      {
        Sid: `JitkeyRevokedAllUntil${until}`,
        Effect: "Deny",
        Action: "*",
        Resource: "*",
        Condition: { DateLessThan: { "aws:TokenIssueTime": cutoff } },
      },
    ]);
  });

  it("needs no entry for a lease the cut-off already covers", () => {
    const state = parseRevocationPolicy(undefined);
    revokeAllIssuedBefore(state, timing(T0));
    // Expires 10 min after the cut-off: issued at least 900 s before expiry, so before the cut-off.
    expect(addRevokedLease(state, "lse_a", T0 + 10 * MINUTE, timing(T0 + MINUTE))).to.equal(false);
    // Expires 20 min after: may have been issued after the cut-off.
    expect(addRevokedLease(state, "lse_b", T0 + 20 * MINUTE, timing(T0 + MINUTE))).to.equal(true);
  });

  it("prunes the cut-off once every session issued before it has expired", () => {
    const state = parseRevocationPolicy(undefined);
    revokeAllIssuedBefore(state, timing(T0));
    const until = T0 + 5000 + 3600_000 + 5000;
    expect(pruneExpired(state, until - 1000)).to.equal(false);
    expect(pruneExpired(state, until)).to.equal(true);
    expect(serialiseRevocationPolicy(state)).to.equal(undefined);
  });

  it("keeps statements it did not write, and hand-edited ones it cannot read, verbatim", () => {
    const foreign = { Sid: "OpsBreakGlass", Effect: "Deny", Action: "s3:*", Resource: "*" };
    const edited = {
      Sid: "JitkeyRevokedLeasesUntil1",
      Effect: "Deny",
      Action: "*",
      Resource: "*",
      Condition: { StringLike: { "aws:PrincipalTag/jitkey-lease": "lse_*" } },
    };
    const state = parseRevocationPolicy(
      JSON.stringify({ Version: "2012-10-17", Statement: [foreign, edited] }),
    );
    pruneExpired(state, T0);
    addRevokedLease(state, "lse_a", T0 + 10 * MINUTE, timing(T0));
    const statements = statementsOf(serialiseRevocationPolicy(state));
    expect(statements).to.deep.include(foreign);
    expect(statements).to.deep.include(edited);
    expect(statements).to.have.length(3);
  });

  it("reads a single lease id written as a string rather than a list", () => {
    const document = JSON.stringify({
      Version: "2012-10-17",
      Statement: {
        Sid: "JitkeyRevokedLeasesUntil1900000800",
        Effect: "Deny",
        Action: ["*"],
        Resource: "*",
        Condition: { StringEquals: { "aws:PrincipalTag/jitkey-lease": "lse_x" } },
      },
    });
    const state = parseRevocationPolicy(document);
    expect([...(state.leases.get(1_900_000_800) ?? [])]).to.deep.equal(["lse_x"]);
    expect(state.others).to.deep.equal([]);
  });

  it("counts size without white space, as IAM does", () => {
    expect(policySize('{ "a" :\n\t"b c" }')).to.equal(10);
  });
});

describe("aws session naming", () => {
  const request = {
    leaseId: "lse_AbC-123_xyz",
    taskId: "tsk_q1",
    resource: "aws",
    scopes: ["read"],
    expiresAt: new Date(T0),
  };

  it("uses a valid agent id as the source identity and adds no agent tag", () => {
    const identity = sessionIdentity({ ...request, agentId: "build.bot@example.com" });
    expect(identity).to.deep.equal({
      roleSessionName: "lse_AbC-123_xyz",
      sourceIdentity: "build.bot@example.com",
      tags: [
        { Key: "jitkey-lease", Value: "lse_AbC-123_xyz" },
        { Key: "jitkey-task", Value: "tsk_q1" },
      ],
    });
  });

  it("sanitises other agent ids deterministically and keeps the full id in a tag", () => {
    const agentId = "ci:repo:acme/app:ref:refs/heads/main";
    const first = sessionIdentity({ ...request, agentId });
    const second = sessionIdentity({ ...request, agentId });
    expect(first).to.deep.equal(second);
    expect(first.sourceIdentity).to.match(/^ci_repo_acme_app_ref_refs_heads_main-[0-9a-f]{12}$/);
    expect(first.tags).to.deep.include({ Key: "jitkey-agent", Value: agentId });
  });

  it("never maps two agent ids to the same source identity", () => {
    expect(fitSessionName("a:b")).to.not.equal(fitSessionName("a/b"));
    expect(fitSessionName("x".repeat(65))).to.not.equal(fitSessionName(`${"x".repeat(64)}y`));
  });

  it("fits any text in 2 to 64 allowed characters", () => {
    for (const text of ["", "a", "aws:root", "é".repeat(80), "a b|c", "x".repeat(200)]) {
      expect(fitSessionName(text)).to.match(/^[\w+=,.@-]{2,64}$/);
    }
  });

  it("encodes agent ids a tag cannot hold, reversibly when short enough", () => {
    expect(fitTagValue("auth0|123")).to.equal(`base64url:${Buffer.from("auth0|123").toString("base64url")}`);
    expect(fitTagValue("é ü")).to.equal("é ü");
    expect(fitTagValue("|".repeat(300))).to.match(/^sha256:[0-9a-f]{64}$/);
  });
});

describe("aws session policy", () => {
  const scopes = {
    read: [{ Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::r/*" }],
    write: [
      { Effect: "Allow", Action: "s3:PutObject", Resource: "arn:aws:s3:::r/*" },
      { Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::r/*" },
    ],
    admin: [{ Effect: "Allow", Action: "s3:*", Resource: "*" }],
  };

  it("is the union of the granted scopes' statements, in configured order, each once", () => {
    expect(JSON.parse(leaseSessionPolicy(scopes, ["write", "read"]))).to.deep.equal({
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Action: "s3:GetObject", Resource: "arn:aws:s3:::r/*" },
        { Effect: "Allow", Action: "s3:PutObject", Resource: "arn:aws:s3:::r/*" },
      ],
    });
  });

  it("refuses a scope the options do not configure", () => {
    expect(() => leaseSessionPolicy(scopes, ["read", "delete"])).to.throw(/delete/);
  });
});
