import { createHash, createHmac, pbkdf2Sync } from "node:crypto";
import { createServer } from "node:net";
import { expect } from "chai";
import { AdapterError } from "../../adapters/types.ts";
import { createLogger, type Logger } from "../../broker/logger.ts";

/** Awaits `promise` and returns the AdapterError it rejects with; fails the test otherwise. */
export async function expectAdapterError<E extends AdapterError = AdapterError>(
  promise: Promise<unknown>,
): Promise<E> {
  try {
    await promise;
  } catch (error) {
    expect(error).to.be.instanceOf(AdapterError);
    return error as E;
  }
  expect.fail("expected an AdapterError");
}

/** A local TCP port nothing listens on (it was free a moment ago). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (!address || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** A JSON logger, debug lines included, whose lines a test can search for secrets. */
export function capturingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = createLogger({ level: "debug", sink: { write: (line: string) => lines.push(line) } });
  return { logger, lines };
}

/** Verifies a password against PostgreSQL's stored SCRAM-SHA-256 verifier (RFC 5802 / 7677). */
export function scramVerifierMatches(verifier: string, password: string): boolean {
  const match = /^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$/.exec(verifier);
  if (!match) return false;
  const [, iterations, salt, storedKey] = match;
  const salted = pbkdf2Sync(password, Buffer.from(salt ?? "", "base64"), Number(iterations), 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  return createHash("sha256").update(clientKey).digest("base64") === storedKey;
}
