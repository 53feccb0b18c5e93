/**
 * The adapter interface: the one seam between the broker and a kind of credential.
 *
 * Adapters know nothing of HTTP, tasks or policy. The broker tells an adapter which lease
 * it is issuing for and until when; the adapter creates a credential in its backend,
 * **named after the lease id** so that the revocation path can always find it, and
 * returns the secret once. The broker never stores that secret.
 */

/** How a credential issued by an adapter can be ended before it expires. */
export type RevocationMode =
  /** The backend deletes or disables the credential itself (Vault lease, database role). */
  | "backend"
  /** The credential stays valid offline; resource servers learn of revocation by introspection. */
  | "introspection"
  /** Nothing can end it early (e.g. a GCP access token); it dies at its expiry. */
  | "none";

/** What an adapter declares about itself; shown on every lease it issues. */
export interface AdapterCapabilities {
  /** How a credential can be ended early. */
  readonly revocation: RevocationMode;
  /** Whether `renew` is implemented. */
  readonly renewable: boolean;
  /**
   * The shortest credential the backend can issue (AWS STS: 900 s). A lease may still be
   * shorter: the broker revokes it at the lease's own expiry, and the credential's
   * `expiresAt` says the lease's end. Only meaningful with `revocation: "backend"`.
   */
  readonly minTtlSeconds?: number;
  /**
   * The longest credential the backend issues (or, for a credential nothing can revoke, the
   * longest the adapter is willing to hand out). The broker caps every lease to it.
   */
  readonly maxTtlSeconds?: number;
  /**
   * Whether credentials are tokens the adapter signs itself, so they can carry
   * `IssueRequest.claims` and a key `binding` (`cnf.jkt`). Only such credentials may be
   * sender-constrained (DPoP) or delegated by token exchange.
   */
  readonly tokenClaims?: boolean;
  /**
   * `issue` creates nothing outside the broker: it computes a credential in-process (a token
   * the broker signs) that is worth nothing without its lease record (introspection answers
   * from it). A crash before the lease is written leaves nothing anyone holds or that needs
   * revoking, so the broker writes such a lease once, after `issue`, already active — one
   * Redis write per mint instead of two. Adapters that create anything in a backend leave it
   * unset: their lease is written before they are asked.
   */
  readonly issuesLocally?: boolean;
}

/** Everything an adapter needs to mint one credential. No HTTP, task or policy objects. */
export interface IssueRequest {
  /** The lease id; whatever the adapter creates must carry it in its name or metadata. */
  readonly leaseId: string;
  readonly taskId: string;
  /** The workload the credential is for, e.g. `ci:repo:acme/app:ref:refs/heads/main`. */
  readonly agentId: string;
  /** The configured resource name. */
  readonly resource: string;
  /** Scopes granted for this lease; a subset of the resource's scopes. */
  readonly scopes: readonly string[];
  /** When the lease ends; the credential must not outlive it. */
  readonly expiresAt: Date;
  /**
   * Further claims for adapters with `capabilities.tokenClaims` (the task's purpose, a
   * delegation's `act` chain, `client_id`). They never override the adapter's own claims
   * (`iss`, `sub`, `aud`, `jti`, times, `scope`, `task_id`, `cnf`). Other adapters ignore them.
   */
  readonly claims?: Readonly<Record<string, unknown>>;
  /**
   * The key the credential is bound to (RFC 9449 DPoP: the RFC 7638 SHA-256 thumbprint of the
   * client's public key, carried as `cnf.jkt`). Only set for adapters with
   * `capabilities.tokenClaims`; the broker refuses a binding any other adapter would drop.
   */
  readonly binding?: { readonly jkt: string };
}

/** What an adapter returns from a successful issue. */
export interface IssuedCredential {
  /**
   * The secret material, returned to the agent once. Never stored, logged or audited.
   * Its shape is the adapter's, e.g. `{type: "bearer", token, expiresAt}`.
   */
  readonly credential: { readonly type: string; readonly expiresAt: string } & Record<string, unknown>;
  /**
   * A non-secret reference to what was created (Vault lease id, token accessor, role
   * name), kept on the lease and handed back to `revoke`. Must never be a secret.
   */
  readonly handle?: string;
  /**
   * Further non-secret references the adapter wants back on `revoke` and `renew`, e.g. the
   * accessor of the token that owns a dynamic Vault lease. Kept on the lease; never secrets.
   */
  readonly references?: Readonly<Record<string, string>>;
  /** The credential's real expiry when the backend shortened it below the requested one. */
  readonly expiresAt?: Date;
}

/** What the broker knows about a lease when asking for it to be revoked. */
export interface RevokeRequest {
  readonly leaseId: string;
  readonly resource: string;
  /** The handle from `issue`, when the lease got that far. Absent after a crash mid-issue. */
  readonly handle?: string;
  /** The `references` from `issue`, when the lease got that far. */
  readonly references?: Readonly<Record<string, string>>;
}

/** Asks an adapter to extend a live credential. */
export interface RenewRequest extends RevokeRequest {
  /** The new end; adapters must never extend past it. */
  readonly expiresAt: Date;
}

/** What the reconciler tells an adapter's orphan sweep. */
export interface OrphanSweepContext {
  /** Whether a jitkey lease that is not yet revoked recorded this handle. */
  isHandleOwned(handle: string): Promise<boolean>;
  /** Sweep only what was created before this: a mint in flight has not recorded its handle yet. */
  readonly createdBefore: Date;
}

/** The result of a health probe. */
export interface AdapterHealth {
  readonly ok: boolean;
  /** A short, secret-free reason when not ok. */
  readonly detail?: string;
}

/**
 * A credential adapter bound to one configured resource.
 *
 * @example
 * ```ts
 * const issued = await adapter.issue({ leaseId, taskId, agentId, resource, scopes, expiresAt });
 * // ... later, on expiry, completion, release or operator action:
 * await adapter.revoke({ leaseId, resource, handle: issued.handle });
 * ```
 */
export interface CredentialAdapter {
  /** The adapter kind, as written in the resource's `adapter` field. */
  readonly kind: string;
  /** What this adapter can do. */
  readonly capabilities: AdapterCapabilities;
  /**
   * Creates a credential for the lease. Throws {@link AdapterError} on failure; may have
   * created something before failing, which `revoke` with the same lease id must remove.
   */
  issue(request: IssueRequest): Promise<IssuedCredential>;
  /**
   * Ends the credential. Idempotent: revoking twice, or revoking a lease that was never
   * issued, succeeds. Throws {@link AdapterError}; `permanent` errors are not retried.
   */
  revoke(request: RevokeRequest): Promise<void>;
  /** Extends a live credential up to `expiresAt`; only when `capabilities.renewable`. */
  renew?(request: RenewRequest): Promise<{ expiresAt: Date }>;
  /** Probes the backend. */
  health(): Promise<AdapterHealth>;
  /**
   * Finds what the backend holds on jitkey's behalf that no live lease owns (a crash between
   * the backend issuing and the broker recording the handle) and revokes it. Called by the
   * reconciler; optional.
   */
  sweepOrphans?(context: OrphanSweepContext): Promise<{ revoked: string[] }>;
  /** Releases connections and timers. */
  close?(): Promise<void>;
}

/**
 * An adapter failure. `permanent` failures (bad configuration, permission denied) are not
 * retried by the revocation jobs; transient ones (timeouts, 5xx) are.
 * The message must never contain a secret.
 */
export class AdapterError extends Error {
  static readonly code = "adapter_unavailable";
  readonly permanent: boolean;

  constructor(message: string, options: { permanent?: boolean; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = this.constructor.name;
    this.permanent = options.permanent ?? false;
  }
}

/** Locks shared by every broker and worker process (Redis-backed in the broker). */
export interface AdapterLocks {
  /**
   * Runs `fn` while holding the lock `name`, so read-modify-write of one backend object
   * (an IAM policy document, say) never loses a concurrent writer's change.
   * Throws when the lock cannot be taken in time; treat that as transient.
   */
  withLock<T>(name: string, fn: () => Promise<T>): Promise<T>;
}

/** What the broker hands an adapter factory besides the resource's own options. */
export interface AdapterContext {
  /** The configured resource name. */
  readonly resource: string;
  /** The scopes the resource declares: each must mean something to the adapter. */
  readonly scopes: readonly string[];
  /** The broker's public issuer URL (the `iss` of broker-signed tokens). */
  readonly issuer: string;
  /** Broker-held signing keys, for adapters that sign credentials themselves. */
  readonly signingKeys: import("./jwt/signing-keys.ts").SigningKeyring;
  /** Structured logger; never pass it a secret. */
  readonly logger: import("../broker/logger.ts").Logger;
  /** The broker's clock: adapters read "now" here, never from `Date.now()`, so tests can move it. */
  readonly clock: import("../broker/clock.ts").Clock;
  /** Cross-process locks, for backends whose revocation is a read-modify-write. */
  readonly locks: AdapterLocks;
}

/**
 * Builds an adapter for one resource. Parses its own `unknown` options with its own zod
 * schema and throws a `ZodError` naming the bad field.
 */
export type AdapterFactory = (options: unknown, context: AdapterContext) => CredentialAdapter;
