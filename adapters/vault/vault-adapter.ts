import type {
  AdapterFactory,
  AdapterHealth,
  CredentialAdapter,
  IssuedCredential,
  IssueRequest,
  OrphanSweepContext,
  RenewRequest,
  RevokeRequest,
} from "../types.ts";
import { AdapterError } from "../types.ts";
import { findJitkeyTokens, type JitkeyToken, leaseTokenMeta, META, revokeAccessor } from "./lease-tokens.ts";
import { isAlreadyGone, VaultRequestError } from "./vault-errors.ts";
import { VaultAdapterOptions } from "./vault-options.ts";
import { VaultSession } from "./vault-session.ts";

interface AuthResponse {
  auth?: { client_token?: string; accessor?: string; lease_duration?: number } | null;
  wrap_info?: WrapInfo | null;
}

interface WrapInfo {
  token?: string;
  accessor?: string;
  ttl?: number;
  creation_path?: string;
  wrapped_accessor?: string;
}

interface SecretResponse {
  lease_id?: string;
  lease_duration?: number;
  renewable?: boolean;
  data?: Record<string, unknown> | null;
}

/**
 * Vault / OpenBao credentials, in one of two modes chosen per resource:
 *
 * - `token`: an orphan, non-renewable Vault token with the resource's policies, TTL = the
 *   lease's, display name and meta naming the jitkey lease. Handle: the token's accessor.
 * - `dynamic`: a leased secret read from `path` (e.g. `database/creds/<role>`). Every issue
 *   first creates a per-lease orphan token named after the jitkey lease and reads the path
 *   *with that token*, so the Vault lease belongs to it and dies with it (revocation, or
 *   expiry at the jitkey lease's end). Handle: the Vault `lease_id`.
 *
 * Either way a crash at any point leaves only tokens whose meta names the lease id, which
 * `revoke` finds without a handle. See docs/vault.md for the design and its costs.
 */
export const createVaultAdapter: AdapterFactory = (rawOptions, context): CredentialAdapter => {
  const options = VaultAdapterOptions.parse(rawOptions ?? {});
  const resource = context.resource;
  const session = new VaultSession({
    address: options.address,
    namespace: options.namespace,
    login: options.appRole
      ? { kind: "appRole", ...options.appRole }
      : { kind: "token", token: options.token ?? "" },
    requestTimeoutMs: options.requestTimeoutMs,
    logger: context.logger,
  });
  const mode = options.mode;
  const dynamicPath = options.path ?? "";
  const sweepPrefixes = options.sweepPrefixes ?? (mode === "dynamic" ? [dynamicPath] : []);
  /** Where the agent uses a Vault token or unwraps a wrapping token. */
  const vaultLocation = {
    address: options.address.replace(/\/+$/, ""),
    ...(options.namespace ? { namespace: options.namespace } : {}),
  };

  const tokensOfLease = (leaseId: string): Promise<JitkeyToken[]> =>
    findJitkeyTokens(
      session,
      resource,
      options.lookupConcurrency,
      (token) => token.meta[META.leaseId] === leaseId,
    );

  /**
   * Whole seconds to ask Vault for so that nothing outlives `expiresAt`. Vault counts a TTL from
   * when it handles the request, a little after this clock reads, so keep back up to a second
   * (a tenth of the time left, for very short leases) for latency and clock skew.
   */
  const secondsUntil = (expiresAt: Date): number => {
    const left = expiresAt.getTime() - Date.now();
    return Math.floor((left - Math.min(1000, left / 10)) / 1000);
  };

  /** Creates a per-lease orphan token; `wrapTtl` response-wraps it. */
  const createLeaseToken = async (
    request: IssueRequest,
    ttlSeconds: number,
    wrapTtl: number | undefined,
  ): Promise<AuthResponse> => {
    const body: Record<string, unknown> = {
      // Vault prefixes "token-" and turns "_" into "-": "token-lse-…". Meta keeps the exact id.
      display_name: request.leaseId,
      meta: leaseTokenMeta(request),
      ttl: `${ttlSeconds}s`,
      no_default_policy: options.noDefaultPolicy,
      ...(options.policies ? { policies: options.policies } : {}),
      ...(mode === "token"
        ? { renewable: false, explicit_max_ttl: `${ttlSeconds}s` }
        : // The per-lease token owns the dynamic lease, so renewing the lease must renew it too.
          { renewable: true }),
    };
    return session.request<AuthResponse>(
      "token creation",
      (vault) => vault.write("auth/token/create-orphan", body),
      wrapTtl ? { headers: { "X-Vault-Wrap-TTL": `${wrapTtl}s` } } : {},
    );
  };

  const issueToken = async (request: IssueRequest, ttlSeconds: number, startedAt: number) => {
    const wrapTtl = options.wrapTtlSeconds ? Math.min(options.wrapTtlSeconds, ttlSeconds) : undefined;
    const response = await createLeaseToken(request, ttlSeconds, wrapTtl);
    if (wrapTtl) {
      const wrap = response.wrap_info;
      // wrapped_accessor lets the broker revoke the token it never saw.
      if (!wrap?.token || !wrap.wrapped_accessor) {
        throw new AdapterError("Vault returned no wrapping token or wrapped accessor", { permanent: true });
      }
      const expiresAt = new Date(Math.min(request.expiresAt.getTime(), startedAt + ttlSeconds * 1000));
      return {
        credential: {
          type: "vault-wrapped",
          wrapToken: wrap.token,
          wrappedType: "vault-token",
          wrapExpiresAt: new Date(startedAt + (wrap.ttl ?? wrapTtl) * 1000).toISOString(),
          ...vaultLocation,
          expiresAt: expiresAt.toISOString(),
        },
        handle: wrap.wrapped_accessor,
        expiresAt,
      } satisfies IssuedCredential;
    }
    const auth = response.auth;
    if (!auth?.client_token || !auth.accessor) {
      throw new AdapterError("Vault token creation returned no token", { permanent: true });
    }
    const granted = auth.lease_duration ?? ttlSeconds;
    const expiresAt = new Date(Math.min(request.expiresAt.getTime(), startedAt + granted * 1000));
    return {
      credential: {
        type: "vault-token",
        token: auth.client_token,
        ...vaultLocation,
        expiresAt: expiresAt.toISOString(),
      },
      handle: auth.accessor,
      expiresAt,
    } satisfies IssuedCredential;
  };

  const revokeVaultLease = async (leaseId: string): Promise<void> => {
    try {
      // sync: answer only once the backend (e.g. the database role) is gone.
      await session.request("lease revocation", (vault) =>
        vault.write("sys/leases/revoke", { lease_id: leaseId, sync: true }),
      );
    } catch (error) {
      if (isAlreadyGone(error)) return;
      throw error;
    }
  };

  const issueDynamic = async (request: IssueRequest, ttlSeconds: number, startedAt: number) => {
    const tokenResponse = await createLeaseToken(request, ttlSeconds, undefined);
    const leaseToken = tokenResponse.auth?.client_token;
    const accessor = tokenResponse.auth?.accessor;
    if (!leaseToken || !accessor)
      throw new AdapterError("Vault token creation returned no token", { permanent: true });
    const tokenTtl = tokenResponse.auth?.lease_duration ?? ttlSeconds;
    let vaultLeaseId: string | undefined;
    try {
      const secret = await session.request<SecretResponse>(
        `read of ${dynamicPath}`,
        (vault) => vault.read(dynamicPath),
        {
          token: leaseToken,
        },
      );
      vaultLeaseId = secret.lease_id || undefined;
      if (!vaultLeaseId || !secret.data) {
        throw new AdapterError(
          `Vault path ${dynamicPath} returned no lease; mode dynamic needs a leased secret`,
          {
            permanent: true,
          },
        );
      }
      const granted = Math.min(secret.lease_duration ?? ttlSeconds, tokenTtl);
      const expiresAt = new Date(Math.min(request.expiresAt.getTime(), startedAt + granted * 1000));
      if (!options.wrapTtlSeconds) {
        return {
          credential: { type: "vault", data: secret.data, expiresAt: expiresAt.toISOString() },
          handle: vaultLeaseId,
          references: { tokenAccessor: accessor },
          expiresAt,
        } satisfies IssuedCredential;
      }
      // Wrapping the read itself would hide lease_id from the broker, which needs it as the
      // handle and for the orphan sweep; so read, then wrap the data with sys/wrapping/wrap.
      const wrapTtl = Math.min(options.wrapTtlSeconds, ttlSeconds);
      const wrapped = await session.request<AuthResponse>(
        "response wrapping",
        (vault) => vault.write("sys/wrapping/wrap", secret.data),
        { headers: { "X-Vault-Wrap-TTL": `${wrapTtl}s` } },
      );
      const wrapToken = wrapped.wrap_info?.token;
      if (!wrapToken) throw new AdapterError("Vault returned no wrapping token", { permanent: true });
      return {
        credential: {
          type: "vault-wrapped",
          wrapToken,
          wrappedType: "vault",
          wrapExpiresAt: new Date(startedAt + (wrapped.wrap_info?.ttl ?? wrapTtl) * 1000).toISOString(),
          ...vaultLocation,
          expiresAt: expiresAt.toISOString(),
        },
        handle: vaultLeaseId,
        references: { tokenAccessor: accessor },
        expiresAt,
      } satisfies IssuedCredential;
    } catch (error) {
      // Leave nothing behind for a failed issue: the token takes its lease with it.
      await revokeAccessor(session, accessor).catch((cleanupError: unknown) =>
        context.logger.warn("vault: cleanup after failed issue failed; revocation by lease id will retry", {
          leaseId: request.leaseId,
          error: (cleanupError as Error).message,
        }),
      );
      throw error;
    }
  };

  const adapter: CredentialAdapter = {
    kind: "vault",
    capabilities: { revocation: "backend", renewable: mode === "dynamic" },

    async issue(request: IssueRequest): Promise<IssuedCredential> {
      const startedAt = Date.now();
      const ttlSeconds = secondsUntil(request.expiresAt);
      if (ttlSeconds < 1) throw new AdapterError("lease expires in under a second", { permanent: true });
      return mode === "token"
        ? issueToken(request, ttlSeconds, startedAt)
        : issueDynamic(request, ttlSeconds, startedAt);
    },

    async revoke(request: RevokeRequest): Promise<void> {
      if (mode === "token" && request.handle) {
        await revokeAccessor(session, request.handle);
        return;
      }
      // The Vault lease first: one call ends the credential even if the search below fails.
      if (request.handle) await revokeVaultLease(request.handle);
      // Then the per-lease token: by its recorded accessor, or, when the lease never got that
      // far (crash mid-issue), by searching for tokens named after the lease. Their leases go with them.
      const accessor = request.references?.tokenAccessor;
      if (accessor) {
        await revokeAccessor(session, accessor);
        return;
      }
      for (const token of await tokensOfLease(request.leaseId)) await revokeAccessor(session, token.accessor);
    },

    async health(): Promise<AdapterHealth> {
      try {
        const health = await session.request<{ initialized?: boolean; sealed?: boolean }>(
          "health check",
          (vault) => vault.read("sys/health"),
        );
        if (health.sealed === true || health.initialized === false)
          return { ok: false, detail: "Vault is sealed" };
        await session.request("token lookup", (vault) => vault.read("auth/token/lookup-self"));
        return { ok: true };
      } catch (error) {
        return { ok: false, detail: (error as Error).message };
      }
    },

    async sweepOrphans(sweep: OrphanSweepContext): Promise<{ revoked: string[] }> {
      const revoked: string[] = [];
      const cutoff = sweep.createdBefore.getTime();
      if (mode === "token") {
        const tokens = await findJitkeyTokens(
          session,
          resource,
          options.lookupConcurrency,
          (token) => token.createdAt.getTime() < cutoff,
        );
        for (const token of tokens) {
          if (await sweep.isHandleOwned(token.accessor)) continue;
          await revokeAccessor(session, token.accessor);
          revoked.push(token.accessor);
        }
        return { revoked };
      }
      for (const prefix of sweepPrefixes) {
        let keys: string[];
        try {
          const listed = await session.request<{ data?: { keys?: string[] } }>("lease list", (vault) =>
            vault.list(`sys/leases/lookup/${prefix}`),
          );
          keys = listed.data?.keys ?? [];
        } catch (error) {
          if (error instanceof VaultRequestError && error.status === 404) continue; // no leases
          throw error;
        }
        // Keys ending in "/" are deeper prefixes; only leases directly under the prefix are swept.
        for (const key of keys.filter((k) => !k.endsWith("/"))) {
          const vaultLeaseId = `${prefix}/${key}`;
          let issuedAt: number;
          try {
            const lookup = await session.request<{ data?: { issue_time?: string } }>(
              "lease lookup",
              (vault) => vault.write("sys/leases/lookup", { lease_id: vaultLeaseId }),
            );
            issuedAt = Date.parse(lookup.data?.issue_time ?? "");
          } catch (error) {
            if (isAlreadyGone(error)) continue;
            throw error;
          }
          if (!Number.isFinite(issuedAt) || issuedAt >= cutoff) continue;
          if (await sweep.isHandleOwned(vaultLeaseId)) continue;
          await revokeVaultLease(vaultLeaseId);
          revoked.push(vaultLeaseId);
        }
      }
      return { revoked };
    },

    async close(): Promise<void> {
      session.close();
    },
  };

  if (mode === "dynamic") {
    adapter.renew = async (request: RenewRequest): Promise<{ expiresAt: Date }> => {
      if (!request.handle) {
        throw new AdapterError("cannot renew a Vault lease whose lease_id was never recorded", {
          permanent: true,
        });
      }
      const startedAt = Date.now();
      const increment = secondsUntil(request.expiresAt);
      if (increment < 1) throw new AdapterError("renewal would end in under a second", { permanent: true });
      // The per-lease token owns the Vault lease; if it expired first, the lease would die with it.
      const recorded = request.references?.tokenAccessor;
      const tokens = recorded ? [{ accessor: recorded }] : await tokensOfLease(request.leaseId);
      if (tokens.length === 0) {
        throw new AdapterError("the per-lease Vault token is gone; the lease cannot be renewed", {
          permanent: true,
        });
      }
      let granted = increment;
      for (const token of tokens) {
        const renewed = await session.request<AuthResponse>("token renewal", (vault) =>
          vault.write("auth/token/renew-accessor", { accessor: token.accessor, increment: `${increment}s` }),
        );
        granted = Math.min(granted, renewed.auth?.lease_duration ?? 0);
      }
      const renewed = await session.request<SecretResponse>("lease renewal", (vault) =>
        vault.write("sys/leases/renew", { lease_id: request.handle, increment }),
      );
      granted = Math.min(granted, renewed.lease_duration ?? 0);
      return { expiresAt: new Date(Math.min(request.expiresAt.getTime(), startedAt + granted * 1000)) };
    };
  }

  return adapter;
};
