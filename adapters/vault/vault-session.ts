import NodeVault from "node-vault";
import type { Logger } from "../../broker/logger.ts";
import { AdapterError } from "../types.ts";
import { toAdapterError, vaultStatus } from "./vault-errors.ts";

/** How the broker proves itself to Vault. */
export type VaultLogin =
  | { readonly kind: "token"; readonly token: string }
  | {
      readonly kind: "appRole";
      readonly roleId: string;
      readonly secretId: string;
      readonly mountPath: string;
    };

export interface VaultSessionOptions {
  readonly address: string;
  readonly namespace?: string | undefined;
  readonly login: VaultLogin;
  readonly requestTimeoutMs: number;
  readonly logger: Logger;
}

/** Per-call options for {@link VaultSession.request}. */
export interface VaultCallOptions {
  /** Call with this token instead of the broker's (a per-lease token). */
  readonly token?: string;
  /** Extra request headers, e.g. `X-Vault-Wrap-TTL`. */
  readonly headers?: Readonly<Record<string, string>>;
}

/** The node-vault calls the adapter makes, with the per-call options it passes. */
export interface VaultCalls {
  read(path: string): Promise<unknown>;
  write(path: string, data: unknown): Promise<unknown>;
  list(path: string): Promise<unknown>;
}

/** Renew when this share of the token's TTL has passed. */
const RENEW_AT = 2 / 3;
const MIN_TIMER_MS = 250;
const RETRY_MAX_MS = 30_000;

interface AuthBlock {
  client_token?: string;
  lease_duration?: number;
  renewable?: boolean;
}

/**
 * The broker's own authenticated connection to Vault: one node-vault client, the broker's
 * token, and its upkeep. With AppRole it logs in lazily on first use, renews the token
 * (`auth/token/renew-self`) when two thirds of its TTL have passed, and logs in again when a
 * renewal fails or can no longer extend the token (max TTL reached). A renewable static token
 * is renewed the same way. Timers are unref'd and cleared by {@link close}.
 */
export class VaultSession {
  private readonly client: NodeVault.client;
  private token: string | undefined;
  private watching: Promise<void> | undefined;
  private loggingIn: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private loginTtlSeconds = 0;
  private retryDelayMs = 1000;

  constructor(private readonly options: VaultSessionOptions) {
    this.client = VaultSession.newClient(options);
    if (options.login.kind === "token") this.token = options.login.token;
  }

  private static newClient(options: VaultSessionOptions): NodeVault.client {
    const client = NodeVault({
      endpoint: options.address,
      namespace: options.namespace,
      requestOptions: { timeout: options.requestTimeoutMs },
      // node-vault's debug output would print request bodies (secret ids); never enable it.
      debug: () => {},
    });
    // node-vault falls back to VAULT_TOKEN / VAULT_NAMESPACE / VAULT_PREFIX from the environment;
    // this adapter takes its settings from the resource options only.
    const settable = client as unknown as { token: string; namespace: string; pathPrefix: string };
    settable.token = "";
    settable.namespace = options.namespace ?? "";
    settable.pathPrefix = "";
    return client;
  }

  /** Values that must never appear in an error message or log line. */
  get secrets(): string[] {
    const login = this.options.login;
    const fixed = login.kind === "token" ? [login.token] : [login.secretId, login.roleId];
    return this.token ? [...fixed, this.token] : fixed;
  }

  /**
   * Runs one Vault call with the broker's token (or `call.token`) and maps failures to
   * {@link AdapterError}. With AppRole, a 403 on a broker call triggers one fresh login and
   * one retry: the token may have been revoked or expired behind the broker's back.
   */
  async request<T = Record<string, unknown>>(
    action: string,
    send: (vault: VaultCalls) => Promise<unknown>,
    call: VaultCallOptions = {},
  ): Promise<T> {
    if (this.closed) throw new AdapterError("vault adapter is closed", { permanent: true });
    await this.authenticate();
    const secrets = call.token ? [...this.secrets, call.token] : this.secrets;
    try {
      return (await send(this.calls(call))) as T;
    } catch (error) {
      const status = vaultStatus(error);
      // node-vault rejects every status but 200/204; other 2xx (202 Accepted) are success.
      if (status !== undefined && status >= 200 && status < 300) {
        return (error as { response: { body: unknown } }).response.body as T;
      }
      if (status === 403 && !call.token && this.options.login.kind === "appRole") {
        this.options.logger.warn("vault: permission denied; logging in again", { action });
        await this.login();
        try {
          return (await send(this.calls(call))) as T;
        } catch (retryError) {
          throw toAdapterError(retryError, action, this.secrets);
        }
      }
      throw toAdapterError(error, action, secrets);
    }
  }

  /** Stops renewal; later calls fail. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private calls(call: VaultCallOptions): VaultCalls {
    // A fresh headers object per call: node-vault writes X-Vault-Token into it.
    const requestOptions = () => ({
      headers: { ...call.headers, "X-Vault-Token": call.token ?? this.token ?? "" },
    });
    return {
      read: (path) => this.client.read(path, requestOptions()),
      write: (path, data) => this.client.write(path, data, requestOptions()),
      list: (path) => this.client.list(path, requestOptions()),
    };
  }

  private async authenticate(): Promise<void> {
    if (this.options.login.kind === "appRole") {
      if (!this.token) await this.login();
      return;
    }
    this.watching ??= this.watchStaticToken();
    await this.watching;
  }

  /** Logs in with AppRole; concurrent callers share one login. */
  private login(): Promise<void> {
    this.loggingIn ??= this.loginOnce().finally(() => {
      this.loggingIn = undefined;
    });
    return this.loggingIn;
  }

  private async loginOnce(): Promise<void> {
    const login = this.options.login;
    if (login.kind !== "appRole") return;
    let response: { auth?: AuthBlock };
    try {
      response = (await this.client.write(
        `auth/${login.mountPath}/login`,
        { role_id: login.roleId, secret_id: login.secretId },
        // The login request must not carry a stale token.
        { headers: { "X-Vault-Token": "" } },
      )) as { auth?: AuthBlock };
    } catch (error) {
      throw toAdapterError(error, "AppRole login", this.secrets);
    }
    const token = response.auth?.client_token;
    if (!token) throw new AdapterError("Vault AppRole login returned no token", { permanent: true });
    this.token = token;
    this.loginTtlSeconds = response.auth?.lease_duration ?? 0;
    this.retryDelayMs = 1000;
    this.options.logger.info("vault: logged in with AppRole", { ttlSeconds: this.loginTtlSeconds });
    this.schedule(this.loginTtlSeconds, response.auth?.renewable !== false);
  }

  private async watchStaticToken(): Promise<void> {
    try {
      const response = (await this.client.read("auth/token/lookup-self", {
        headers: { "X-Vault-Token": this.token ?? "" },
      })) as { data?: { ttl?: number; renewable?: boolean } };
      this.loginTtlSeconds = response.data?.ttl ?? 0;
      this.schedule(this.loginTtlSeconds, response.data?.renewable === true);
    } catch (error) {
      // A token without lookup-self rights still works for everything else; it just is not renewed.
      this.options.logger.warn("vault: cannot look up the broker token; it will not be renewed", {
        error: toAdapterError(error, "token lookup", this.secrets).message,
      });
    }
  }

  private schedule(ttlSeconds: number, renewable: boolean): void {
    if (this.closed || ttlSeconds <= 0) return;
    if (!renewable && this.options.login.kind !== "appRole") return;
    this.setTimer(Math.max(MIN_TIMER_MS, ttlSeconds * 1000 * RENEW_AT), () =>
      renewable ? this.renew() : this.login(),
    );
  }

  private setTimer(delayMs: number, action: () => Promise<void>): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      action().catch((error: unknown) => this.retryLater(error));
    }, delayMs);
    // Token upkeep must never keep the process alive on its own.
    this.timer.unref();
  }

  private async renew(): Promise<void> {
    if (this.closed) return;
    let auth: AuthBlock | undefined;
    try {
      const response = (await this.client.write(
        "auth/token/renew-self",
        {},
        { headers: { "X-Vault-Token": this.token ?? "" } },
      )) as { auth?: AuthBlock };
      auth = response.auth;
    } catch (error) {
      if (this.options.login.kind !== "appRole") throw error;
      this.options.logger.warn("vault: token renewal failed; logging in again", {
        status: vaultStatus(error),
      });
      await this.login();
      return;
    }
    const granted = auth?.lease_duration ?? 0;
    // Near the max TTL Vault grants less and less; log in again before the token runs out.
    if (this.options.login.kind === "appRole" && granted < this.loginTtlSeconds / 2) {
      await this.login();
      return;
    }
    this.schedule(granted, auth?.renewable !== false);
  }

  private retryLater(error: unknown): void {
    if (this.closed) return;
    this.options.logger.warn("vault: token upkeep failed; retrying", {
      error: toAdapterError(error, "token upkeep", this.secrets).message,
      retryInMs: this.retryDelayMs,
    });
    const delay = this.retryDelayMs;
    this.retryDelayMs = Math.min(RETRY_MAX_MS, this.retryDelayMs * 2);
    this.setTimer(delay, () => (this.options.login.kind === "appRole" ? this.login() : this.renew()));
  }
}
