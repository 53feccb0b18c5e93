import { isTransientNetworkCode, redactSecrets } from "../adapter-error-text.ts";
import { AdapterError } from "../types.ts";

/** What node-vault rejects with when Vault answered with a status other than 200/204. */
interface VaultResponseFailure {
  response: { statusCode: number; body?: unknown };
}

function isResponseFailure(error: unknown): error is VaultResponseFailure {
  const response = (error as { response?: { statusCode?: unknown } } | null)?.response;
  return typeof response?.statusCode === "number";
}

/** The HTTP status Vault answered with, when it answered at all. */
export function vaultStatus(error: unknown): number | undefined {
  return isResponseFailure(error) ? error.response.statusCode : undefined;
}

/** Vault's `{"errors": [...]}` as one line ("1 error occurred: * x" flattened to "x"). */
export function vaultErrorText(error: unknown): string {
  if (!isResponseFailure(error)) return "";
  const errors = (error.response.body as { errors?: unknown } | undefined)?.errors;
  if (!Array.isArray(errors)) return "";
  return errors
    .map((entry) =>
      String(entry)
        .replace(/^\s*\d+ errors? occurred:\s*/i, "")
        .replace(/^\s*\*\s*/gm, "")
        .replace(/\s+/g, " ")
        .trim(),
    )
    .filter((entry) => entry.length > 0)
    .join("; ");
}

/**
 * A failed Vault call. `status` and `vaultText` are kept so callers can tell "already gone"
 * from other failures without parsing messages; neither ever holds a secret.
 */
export class VaultRequestError extends AdapterError {
  /** Vault's HTTP status; undefined when Vault never answered. */
  readonly status: number | undefined;
  /** Vault's error text, flattened and redacted. */
  readonly vaultText: string;

  constructor(message: string, options: { permanent: boolean; status?: number; vaultText?: string }) {
    super(message, { permanent: options.permanent });
    this.status = options.status;
    this.vaultText = options.vaultText ?? "";
  }
}

/**
 * Whether Vault says the thing is already gone (unknown lease, accessor or token). Revoking
 * something that is gone has the effect revocation wanted, so callers count it as success.
 */
export function isAlreadyGone(error: unknown): boolean {
  if (!(error instanceof VaultRequestError)) return false;
  if (error.status !== 400 && error.status !== 404) return false;
  return /lease not found|invalid lease|invalid accessor|token not found|no token found/i.test(
    error.vaultText,
  );
}

/**
 * Maps a node-vault / axios failure to an {@link AdapterError}. 5xx, 429, 412 (Vault's
 * "not yet replicated"), timeouts and connection errors are transient; 403 and other 4xx are
 * permanent and carry Vault's error text. The original error is deliberately not attached as
 * `cause`: an axios error holds the request headers, which include `X-Vault-Token`.
 */
export function toAdapterError(error: unknown, action: string, secrets: readonly string[]): AdapterError {
  if (error instanceof AdapterError) return error;
  const status = vaultStatus(error);
  if (status !== undefined) {
    const vaultText = redactSecrets(vaultErrorText(error), secrets);
    const transient = status >= 500 || status === 429 || status === 412;
    return new VaultRequestError(`Vault ${action} failed (HTTP ${status}): ${vaultText || "no error text"}`, {
      permanent: !transient,
      status,
      vaultText,
    });
  }
  const code = (error as { code?: unknown } | null)?.code;
  if (isTransientNetworkCode(code)) {
    return new VaultRequestError(`Vault ${action} failed: ${code} (Vault unreachable or too slow)`, {
      permanent: false,
    });
  }
  const message = error instanceof Error ? error.message : String(error);
  // Anything else (a malformed answer, a client bug) may clear up on retry; keep it transient.
  return new VaultRequestError(redactSecrets(`Vault ${action} failed: ${message}`, secrets), {
    permanent: false,
  });
}
