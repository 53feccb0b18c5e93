import { IAMCredentialsClient, type protos } from "@google-cloud/iam-credentials";
import { type AuthClient, GoogleAuth } from "google-auth-library";
import { requireScopeMappings } from "../scope-mappings.ts";
import type {
  AdapterContext,
  AdapterHealth,
  CredentialAdapter,
  IssuedCredential,
  IssueRequest,
  RevokeRequest,
} from "../types.ts";
import { exchangeForBoundedToken } from "./access-boundary.ts";
import { GcpAdapterError, toAdapterError } from "./gcp-errors.ts";
import { type AccessBoundaryRule, GcpAdapterOptions, iamEndpoint, type ScopeGrant } from "./gcp-options.ts";

/** What the broker's own credentials must allow: calling the IAM Credentials API. */
const BROKER_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"];

/** What a test may inject instead of the broker's real Google credentials. */
export interface GcpAdapterDependencies {
  /** The broker's own Google credentials; default: `options.credentials`, else Application Default Credentials. */
  readonly authClient?: AuthClient;
}

/** Seconds of a protobuf Timestamp as google-gax decodes it (string, number or Long). */
function timestampMs(timestamp: { seconds?: unknown; nanos?: number | null } | null | undefined): number {
  const seconds = Number(String(timestamp?.seconds ?? Number.NaN));
  return seconds * 1000 + Math.floor((timestamp?.nanos ?? 0) / 1e6);
}

/** `X-Goog-Request-Reason`: Cloud Audit Logs record it, so each token can be traced to its lease. */
function requestReason(request: IssueRequest): string {
  const reason = `jitkey lease=${request.leaseId} task=${request.taskId} agent=${request.agentId} resource=${request.resource}`;
  return reason.replace(/[^\x20-\x7e]/g, "?").slice(0, 512);
}

/** A promise that rejects with a transient error after `ms`; google-gax's REST transport has no timeout of its own. */
async function withTimeout<T>(promise: Promise<T>, ms: number, action: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () => reject(new GcpAdapterError(`GCP ${action} timed out after ${ms} ms`, { permanent: false })),
      ms,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Short-lived OAuth 2.0 access tokens for one Google service account, minted with the IAM
 * Service Account Credentials API (`generateAccessToken`, REST transport), optionally narrowed
 * by a Credential Access Boundary through the STS token exchange.
 *
 * Nothing can revoke such a token before it expires, so `revoke` does nothing and the
 * capabilities say so: `revocation: "none"`, with `maxTtlSeconds` (default 600) as the cap the
 * broker puts on every lease. See docs/gcp.md.
 */
export function createGcpAdapter(
  rawOptions: unknown,
  context: AdapterContext,
  dependencies: GcpAdapterDependencies = {},
): CredentialAdapter {
  const options = GcpAdapterOptions.parse(rawOptions ?? {});
  requireScopeMappings(context.scopes, options.scopes, "scopes");
  const { clock } = context;
  const auth = new GoogleAuth({
    scopes: BROKER_SCOPES,
    ...(dependencies.authClient ? { authClient: dependencies.authClient } : {}),
    ...(options.credentials ? { credentials: options.credentials } : {}),
  });
  const endpoint = iamEndpoint(options.apiEndpoint);
  const client = new IAMCredentialsClient({
    // REST (HTTP/1.1 + JSON) rather than gRPC: one transport for Google, proxies and the test fake.
    fallback: true,
    auth,
    apiEndpoint: endpoint.apiEndpoint,
    port: endpoint.port,
    protocol: endpoint.protocol,
  });
  const name = `projects/-/serviceAccounts/${options.serviceAccount}`;
  const delegates = options.delegates?.map((account) => `projects/-/serviceAccounts/${account}`);

  const grantsFor = (scopes: readonly string[]): ScopeGrant[] =>
    scopes.map((scope) => {
      const grant = options.scopes[scope];
      if (!grant)
        throw new GcpAdapterError(`no OAuth scopes are configured for scope ${scope}`, { permanent: true });
      return grant;
    });

  /**
   * The boundary for a lease: the union of its scopes' rules, or none when any granted scope is
   * unbounded (that scope already allows everything the rules would).
   */
  const boundaryFor = (grants: readonly ScopeGrant[]): AccessBoundaryRule[] | undefined => {
    if (!grants.every((grant) => grant.accessBoundary)) return undefined;
    const rules = new Map<string, AccessBoundaryRule>();
    for (const rule of grants.flatMap((grant) => grant.accessBoundary ?? []))
      rules.set(JSON.stringify(rule), rule);
    return [...rules.values()];
  };

  return {
    kind: "gcp",
    capabilities: { revocation: "none", renewable: false, maxTtlSeconds: options.maxTtlSeconds },

    async issue(request: IssueRequest): Promise<IssuedCredential> {
      const now = clock.now();
      const leaseEnd = request.expiresAt.getTime();
      const lifetimeSeconds = Math.min(options.maxTtlSeconds, Math.floor((leaseEnd - now) / 1000));
      if (lifetimeSeconds < 1) {
        throw new GcpAdapterError("the lease ends in under a second", { permanent: true });
      }
      const grants = grantsFor(request.scopes);
      const oauthScopes = [...new Set(grants.flatMap((grant) => grant.oauthScopes))];
      const rules = boundaryFor(grants);
      const headers = { "x-goog-request-reason": requestReason(request) };

      let response: protos.google.iam.credentials.v1.IGenerateAccessTokenResponse;
      try {
        [response] = await withTimeout(
          client.generateAccessToken(
            {
              name,
              scope: oauthScopes,
              lifetime: { seconds: lifetimeSeconds },
              ...(delegates ? { delegates } : {}),
            },
            // The broker decides about retries: a mint answers the agent now, a revoke job retries itself.
            { retry: null, otherArgs: { headers } },
          ),
          options.requestTimeoutMs,
          "generateAccessToken",
        );
      } catch (error) {
        throw toAdapterError(error, "generateAccessToken", []);
      }
      const sourceToken = response.accessToken;
      if (!sourceToken)
        throw new GcpAdapterError("generateAccessToken returned no accessToken", { permanent: false });
      // Google's expireTime is authoritative; never promise more than the lease or the lifetime asked for.
      let expiresAtMs = Math.min(leaseEnd, now + lifetimeSeconds * 1000);
      const googleExpiry = timestampMs(response.expireTime);
      if (Number.isFinite(googleExpiry)) expiresAtMs = Math.min(expiresAtMs, googleExpiry);

      let accessToken = sourceToken;
      if (rules) {
        const bounded = await exchangeForBoundedToken({
          endpoint: options.stsEndpoint,
          sourceToken,
          rules,
          timeoutMs: options.requestTimeoutMs,
          headers,
        });
        accessToken = bounded.accessToken;
        if (bounded.expiresInSeconds !== undefined) {
          expiresAtMs = Math.min(expiresAtMs, now + bounded.expiresInSeconds * 1000);
        }
      }
      const expiresAt = new Date(expiresAtMs);
      return {
        credential: { type: "gcp", accessToken, expiresAt: expiresAt.toISOString() },
        ...(expiresAtMs < leaseEnd ? { expiresAt } : {}),
      };
    },

    /** Nothing to do: an issued access token cannot be revoked and dies at its expiry. */
    async revoke(_request: RevokeRequest): Promise<void> {},

    /**
     * Fetches the broker's own access token (cached by google-auth-library until near expiry):
     * proves the credentials chain works without minting a token nobody could revoke. It does
     * not prove the Token Creator grant on `serviceAccount`; a missing grant shows as a
     * permanent PERMISSION_DENIED on the first issue.
     */
    async health(): Promise<AdapterHealth> {
      try {
        const token = await withTimeout(auth.getAccessToken(), options.requestTimeoutMs, "credential lookup");
        return token
          ? { ok: true }
          : { ok: false, detail: "the broker's Google credentials produced no token" };
      } catch (error) {
        return { ok: false, detail: toAdapterError(error, "credential lookup", []).message };
      }
    },

    async close(): Promise<void> {
      await client.close();
    },
  };
}
