import { createHash, createHmac, pbkdf2, randomBytes } from "node:crypto";
import { promisify } from "node:util";

const pbkdf2Async = promisify(pbkdf2);

/** PostgreSQL's own default (`scram_iterations`). */
const ITERATIONS = 4096;

/**
 * The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / RFC 7677, in the
 * `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` form of RFC 5803).
 *
 * `CREATE ROLE ... PASSWORD` accepts such a verifier in place of the password, as psql's
 * `\password` sends it, so the password itself never reaches the server, its statement log or
 * `pg_stat_activity`. The password must be ASCII without control characters, for which
 * SASLprep is the identity; jitkey's are base64url.
 */
export async function scramSha256Verifier(password: string): Promise<string> {
  if (!/^[\x21-\x7e]+$/.test(password)) throw new Error("password must be printable ASCII");
  const salt = randomBytes(16);
  const salted = await pbkdf2Async(password, salt, ITERATIONS, 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  const storedKey = createHash("sha256").update(clientKey).digest();
  const serverKey = createHmac("sha256", salted).update("Server Key").digest();
  return `SCRAM-SHA-256$${ITERATIONS}:${salt.toString("base64")}$${storedKey.toString("base64")}:${serverKey.toString("base64")}`;
}
