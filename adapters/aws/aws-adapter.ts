import { GetRolePolicyCommand, IAMClient, PutRolePolicyCommand } from "@aws-sdk/client-iam";
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { requireScopeMappings } from "../scope-mappings.ts";
import type {
  AdapterFactory,
  AdapterHealth,
  CredentialAdapter,
  IssuedCredential,
  IssueRequest,
  RevokeRequest,
} from "../types.ts";
import { AdapterError } from "../types.ts";
import { AwsRequestError, toAwsError } from "./aws-errors.ts";
import { AwsAdapterOptions, roleNameOf } from "./aws-options.ts";
import {
  addRevokedLease,
  parseRevocationPolicy,
  policySize,
  pruneExpired,
  type RevocationState,
  type RevocationTiming,
  revokeAllIssuedBefore,
  serialiseRevocationPolicy,
} from "./revocation-policy.ts";
import { isTagValue, sessionIdentity } from "./session-identity.ts";
import { leaseSessionPolicy } from "./session-policy.ts";

/** STS's shortest session (AssumeRole `DurationSeconds` minimum). */
const MIN_SESSION_SECONDS = 900;
/** Warn when the session policy and tags use this share of STS's packed-size allowance. */
const PACKED_SIZE_WARN_PERCENT = 90;
/**
 * IAM is eventually consistent: after writing the deny policy, read it back until the write
 * shows (waiting this long between reads) before releasing the lock, so the next writer does
 * not start from a stale copy and drop this entry.
 */
const CONFIRM_DELAYS_MS = [50, 100, 200, 400, 800];

/** What `references` holds for `revoke`; none of it is secret. */
const REF = {
  roleArn: "roleArn",
  sessionName: "sessionName",
  /** The credential's real expiry as STS reported it (ISO 8601). */
  credentialExpiresAt: "credentialExpiresAt",
  assumedRoleId: "assumedRoleId",
} as const;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** GetRolePolicy answers URL-encoded (RFC 3986); decode unless the SDK already did. */
function decodePolicyDocument(document: string): string {
  return document.trimStart().startsWith("{") ? document : decodeURIComponent(document);
}

/**
 * AWS credentials through STS `AssumeRole`, one role session per lease:
 *
 * - the session policy is the union of the IAM statements configured for the lease's scopes;
 * - the session lasts max(900 s, the lease's TTL), capped by `maxSessionDurationSeconds`;
 * - the role session name is the lease id, the source identity is the agent id, and the
 *   session tags `jitkey-lease` / `jitkey-task` name the lease and task (CloudTrail shows all).
 *
 * STS cannot end a session early, so `revoke` adds the lease id to an inline deny policy on the
 * role (see revocation-policy.ts), read-modified-written under a cross-process lock per role.
 * STS sessions cannot be listed, so there is no orphan sweep: a crash mid-issue is handled by
 * `revoke` working from the lease id alone. See docs/aws.md.
 */
export const createAwsAdapter: AdapterFactory = (rawOptions, context): CredentialAdapter => {
  const options = AwsAdapterOptions.parse(rawOptions ?? {});
  requireScopeMappings(context.scopes, options.scopes, "scopes");
  const { clock, logger } = context;
  const explicit = options.credentials;
  const credentials = explicit
    ? {
        accessKeyId: explicit.accessKeyId,
        secretAccessKey: explicit.secretAccessKey,
        ...(explicit.sessionToken ? { sessionToken: explicit.sessionToken } : {}),
      }
    : undefined;
  /** Values that must never appear in an error message or log line. */
  const secrets = [explicit?.secretAccessKey, explicit?.sessionToken].filter((s): s is string => !!s);
  const clientConfig = {
    region: options.region,
    maxAttempts: options.maxAttempts,
    requestHandler: {
      requestTimeout: options.requestTimeoutMs,
      connectionTimeout: options.requestTimeoutMs,
      // Without it the SDK only logs a warning when a request overruns its timeout.
      throwOnRequestTimeout: true,
    },
    ...(credentials ? { credentials } : {}),
  };
  const sts = new STSClient({ ...clientConfig, ...(options.endpoint ? { endpoint: options.endpoint } : {}) });
  const iamEndpoint = options.iamEndpoint ?? options.endpoint;
  const iam = new IAMClient({ ...clientConfig, ...(iamEndpoint ? { endpoint: iamEndpoint } : {}) });

  const aws = async <T>(action: string, send: () => Promise<T>): Promise<T> => {
    try {
      return await send();
    } catch (error) {
      throw toAwsError(error, action, secrets);
    }
  };

  const readDenyPolicy = async (roleName: string): Promise<string | undefined> => {
    try {
      const response = await aws("GetRolePolicy", () =>
        iam.send(new GetRolePolicyCommand({ RoleName: roleName, PolicyName: options.revocationPolicyName })),
      );
      return response.PolicyDocument === undefined
        ? undefined
        : decodePolicyDocument(response.PolicyDocument);
    } catch (error) {
      // No deny policy yet. (If the role itself is missing, PutRolePolicy says so.)
      if (error instanceof AwsRequestError && error.code === "NoSuchEntity") return undefined;
      throw error;
    }
  };

  const putDenyPolicy = (roleName: string, document: string) =>
    aws("PutRolePolicy", () =>
      iam.send(
        new PutRolePolicyCommand({
          RoleName: roleName,
          PolicyName: options.revocationPolicyName,
          PolicyDocument: document,
        }),
      ),
    );

  /** Reads the policy back until it shows `document` (or gives up, loudly, after a few seconds). */
  const confirmWritten = async (roleName: string, document: string): Promise<void> => {
    const wanted = JSON.stringify(JSON.parse(document));
    for (const delay of [0, ...CONFIRM_DELAYS_MS]) {
      if (delay > 0) await sleep(delay);
      const read = await readDenyPolicy(roleName);
      if (read !== undefined && JSON.stringify(JSON.parse(read)) === wanted) return;
    }
    logger.warn("aws: the deny policy does not read back as written yet (IAM is eventually consistent)", {
      resource: context.resource,
      roleName,
      policyName: options.revocationPolicyName,
    });
  };

  const fallBackToCutoff = (
    roleName: string,
    state: RevocationState,
    timing: RevocationTiming,
    why: string,
  ) => {
    revokeAllIssuedBefore(state, timing);
    logger.warn("aws: revoked lease list is full; denying every older session of the role instead", {
      resource: context.resource,
      roleName,
      why,
      issuedBefore: state.all ? new Date(state.all.issuedBeforeMs).toISOString() : undefined,
    });
  };

  /** Writes `state` (pruned and extended by the caller); falls back to a cut-off when it is too large. */
  const writeDenyPolicy = async (roleName: string, state: RevocationState, timing: RevocationTiming) => {
    let document = serialiseRevocationPolicy(state);
    // Never empty in practice: the caller just added an entry, or kept one that is still needed.
    if (document === undefined) return;
    if (policySize(document) > options.revocationPolicyMaxChars && state.leases.size > 0) {
      fallBackToCutoff(roleName, state, timing, `over ${options.revocationPolicyMaxChars} characters`);
      document = serialiseRevocationPolicy(state) ?? "";
    }
    try {
      await putDenyPolicy(roleName, document);
    } catch (error) {
      // The role's other inline policies leave less room than configured.
      if (!(error instanceof AwsRequestError && error.code === "LimitExceeded" && state.leases.size > 0))
        throw error;
      fallBackToCutoff(roleName, state, timing, "IAM answered LimitExceeded");
      document = serialiseRevocationPolicy(state) ?? "";
      await putDenyPolicy(roleName, document);
    }
    await confirmWritten(roleName, document);
  };

  const denyLease = async (roleName: string, leaseId: string, credentialExpiresAtMs: number) => {
    const document = await readDenyPolicy(roleName);
    let state: RevocationState;
    try {
      state = parseRevocationPolicy(document);
    } catch {
      throw new AdapterError(
        `the inline policy ${options.revocationPolicyName} of role ${roleName} is not valid JSON; fix or delete it`,
        { permanent: true },
      );
    }
    const timing: RevocationTiming = {
      nowMs: clock.now(),
      clockSkewSeconds: options.clockSkewSeconds,
      maxSessionSeconds: options.maxSessionDurationSeconds,
    };
    const pruned = pruneExpired(state, timing.nowMs);
    const added = addRevokedLease(state, leaseId, credentialExpiresAtMs, timing);
    if (pruned || added) await writeDenyPolicy(roleName, state, timing);
  };

  const withRoleLock = async (roleArn: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await context.locks.withLock(`aws:${roleArn}`, fn);
    } catch (error) {
      if (error instanceof AdapterError) throw error;
      throw new AdapterError(`aws: cannot lock the deny policy of ${roleArn}: ${(error as Error).message}`, {
        permanent: false,
      });
    }
  };

  return {
    kind: "aws",
    capabilities: {
      revocation: "backend",
      renewable: false,
      minTtlSeconds: MIN_SESSION_SECONDS,
      maxTtlSeconds: options.maxSessionDurationSeconds,
    },

    async issue(request: IssueRequest): Promise<IssuedCredential> {
      if (request.scopes.length === 0) {
        // Without a session policy the session would have every permission of the role.
        throw new AdapterError("no scopes granted; refusing an AWS session without a session policy", {
          permanent: true,
        });
      }
      if (!isTagValue(request.leaseId) || !isTagValue(request.taskId)) {
        throw new AdapterError("lease or task id cannot be an AWS session tag value", { permanent: true });
      }
      let policy: string;
      try {
        policy = leaseSessionPolicy(options.scopes, request.scopes);
      } catch (error) {
        throw new AdapterError(`aws resource ${context.resource}: ${(error as Error).message}`, {
          permanent: true,
        });
      }
      const leaseSeconds = Math.ceil((request.expiresAt.getTime() - clock.now()) / 1000);
      if (leaseSeconds < 1) throw new AdapterError("the lease has already expired", { permanent: true });
      const durationSeconds = Math.min(
        options.maxSessionDurationSeconds,
        Math.max(MIN_SESSION_SECONDS, leaseSeconds),
      );
      const identity = sessionIdentity(request);
      const response = await aws("AssumeRole", () =>
        sts.send(
          new AssumeRoleCommand({
            RoleArn: options.roleArn,
            RoleSessionName: identity.roleSessionName,
            Policy: policy,
            DurationSeconds: durationSeconds,
            Tags: identity.tags,
            SourceIdentity: identity.sourceIdentity,
          }),
        ),
      );
      const issued = response.Credentials;
      if (!issued?.AccessKeyId || !issued.SecretAccessKey || !issued.SessionToken || !issued.Expiration) {
        throw new AdapterError("AWS AssumeRole returned no credentials", { permanent: true });
      }
      const stsExpiry = issued.Expiration.getTime();
      const expiresAt = new Date(Math.min(request.expiresAt.getTime(), stsExpiry));
      if ((response.PackedPolicySize ?? 0) >= PACKED_SIZE_WARN_PERCENT) {
        logger.warn("aws: session policy and tags are close to STS's packed size limit", {
          resource: context.resource,
          packedPolicySizePercent: response.PackedPolicySize,
        });
      }
      return {
        credential: {
          type: "aws",
          accessKeyId: issued.AccessKeyId,
          secretAccessKey: issued.SecretAccessKey,
          sessionToken: issued.SessionToken,
          region: options.region,
          expiresAt: expiresAt.toISOString(),
        },
        // arn:aws:sts::<account>:assumed-role/<role>/<lease id>: what CloudTrail calls the caller.
        handle: response.AssumedRoleUser?.Arn ?? `${options.roleArn}/${identity.roleSessionName}`,
        references: {
          [REF.roleArn]: options.roleArn,
          [REF.sessionName]: identity.roleSessionName,
          [REF.credentialExpiresAt]: issued.Expiration.toISOString(),
          ...(response.AssumedRoleUser?.AssumedRoleId
            ? { [REF.assumedRoleId]: response.AssumedRoleUser.AssumedRoleId }
            : {}),
        },
        // Only when STS ended the credential before the lease (a lease longer than the cap).
        ...(stsExpiry < request.expiresAt.getTime() ? { expiresAt } : {}),
      };
    },

    async revoke(request: RevokeRequest): Promise<void> {
      const roleArn = request.references?.[REF.roleArn] ?? options.roleArn;
      let roleName: string;
      try {
        roleName = roleNameOf(roleArn);
      } catch {
        throw new AdapterError("the lease's recorded role is not an IAM role ARN", { permanent: true });
      }
      const now = clock.now();
      const recorded = Date.parse(request.references?.[REF.credentialExpiresAt] ?? "");
      // Without references (a crash mid-issue, or never issued), the session, if any, was issued
      // before now and lasts at most the longest session the adapter asks for.
      const credentialExpiresAtMs = Number.isFinite(recorded)
        ? recorded
        : now + options.maxSessionDurationSeconds * 1000;
      if (credentialExpiresAtMs + options.clockSkewSeconds * 1000 <= now) return;
      await withRoleLock(roleArn, () => denyLease(roleName, request.leaseId, credentialExpiresAtMs));
    },

    async health(): Promise<AdapterHealth> {
      try {
        await aws("GetCallerIdentity", () => sts.send(new GetCallerIdentityCommand({})));
        return { ok: true };
      } catch (error) {
        return { ok: false, detail: (error as Error).message };
      }
    },

    async close(): Promise<void> {
      sts.destroy();
      iam.destroy();
    },
  };
};
