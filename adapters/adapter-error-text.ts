/**
 * What every adapter needs to turn a client library's failure into a safe AdapterError
 * message: which socket failures are worth retrying, and how to keep secrets out of the text.
 */

/** Socket-level failure codes (Node, undici) that say nothing about the request itself: worth retrying. */
const TRANSIENT_NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ERR_SOCKET_CONNECTION_TIMEOUT",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_SOCKET",
  "ERR_NETWORK",
]);

/** Whether `code` is a socket failure worth retrying. */
export function isTransientNetworkCode(code: unknown): code is string {
  return typeof code === "string" && TRANSIENT_NETWORK_CODES.has(code);
}

/**
 * Replaces every known secret in `text` with `[redacted]`: server and library messages may echo
 * what they were sent. Values shorter than 4 characters are left alone (they would match anywhere).
 */
export function redactSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) if (secret.length >= 4) out = out.split(secret).join("[redacted]");
  return out;
}
