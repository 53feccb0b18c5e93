import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { type CryptoKey, exportJWK, generateKeyPair, importJWK, type JWK, SignJWT } from "jose";
import { applyEnvironment, type Config, type Environment, parseConfig } from "./config.ts";
import { sha256Hex } from "./operators/principal-tokens.ts";

/** The dev issuer's `iss`; agent ids are `dev:<subject>`. */
export const DEV_ISSUER = "urn:jitkey:dev-issuer";
export const DEV_AUDIENCE = "jitkey";

/** What only dev mode has: an operator token made at start and a way to mint agent tokens. */
export interface DevModeSecrets {
  readonly operatorToken: string;
  /** Signs a dev identity token for agent `dev:<subject>`. */
  issueAgentToken(subject: string, ttlSeconds?: number): Promise<string>;
}

/**
 * Builds the dev-mode config used when no config file is given: bound to 127.0.0.1, a dev
 * identity issuer whose key lives in the data directory, a demo resource and one rule that
 * needs an operator's approval.
 */
export async function prepareDevMode(
  env: Environment = process.env,
): Promise<{ config: Config; dev: DevModeSecrets }> {
  const dataDir = resolve(env.JITKEY_DATA_DIR ?? ".jitkey");
  const { privateKey, publicJwk } = await loadDevIssuerKey(join(dataDir, "dev-issuer-key.json"));
  const operatorToken = `jkop_${randomBytes(24).toString("base64url")}`;
  const raw = applyEnvironment(
    {
      http: { port: 8080, host: "127.0.0.1" },
      data: { dir: dataDir },
      identity: {
        audience: DEV_AUDIENCE,
        issuers: [{ name: "dev", issuer: DEV_ISSUER, jwks: { keys: [publicJwk] }, owner: "dev mode" }],
      },
      operators: [{ name: "dev-operator", tokenSha256: sha256Hex(operatorToken) }],
      resources: [
        {
          name: "demo-api",
          adapter: "jwt",
          classification: "internal",
          scopes: ["read", "write"],
          maxTtlSeconds: 900,
          owner: "dev mode",
          description: "A demo API that accepts broker-signed bearer tokens",
          options: { audience: "https://demo-api.example" },
        },
      ],
      policies: [
        {
          name: "dev-agents",
          agents: ["dev:*"],
          resources: ["demo-api"],
          scopes: ["read", "write"],
          maxClassification: "internal",
          autoApprove: false,
          maxTtlSeconds: 300,
        },
      ],
      devMode: true,
    },
    env,
  ) as { http: { host: string } };
  // Dev mode never listens beyond this machine, whatever the environment says.
  raw.http.host = "127.0.0.1";
  const config = parseConfig(raw, "dev-mode config");
  return {
    config,
    dev: {
      operatorToken,
      async issueAgentToken(subject, ttlSeconds = 3600) {
        return new SignJWT({})
          .setProtectedHeader({ alg: "ES256", kid: publicJwk.kid as string })
          .setIssuer(DEV_ISSUER)
          .setAudience(DEV_AUDIENCE)
          .setSubject(subject)
          .setIssuedAt()
          .setExpirationTime(`${Math.min(ttlSeconds, config.identity.maxTokenAgeSeconds)}s`)
          .sign(privateKey);
      },
    },
  };
}

async function loadDevIssuerKey(file: string): Promise<{ privateKey: CryptoKey; publicJwk: JWK }> {
  let privateJwk: JWK;
  if (existsSync(file)) {
    privateJwk = JSON.parse(await readFile(file, "utf8")) as JWK;
  } else {
    const pair = await generateKeyPair("ES256", { extractable: true });
    privateJwk = {
      ...(await exportJWK(pair.privateKey)),
      kid: `dev-${randomBytes(6).toString("hex")}`,
      alg: "ES256",
    };
    await mkdir(dirname(file), { recursive: true, mode: 0o700 });
    await writeFile(file, JSON.stringify(privateJwk), { mode: 0o600 });
  }
  const { d: _private, ...publicJwk } = privateJwk;
  return {
    privateKey: (await importJWK(privateJwk, "ES256")) as CryptoKey,
    publicJwk: { ...publicJwk, use: "sig" },
  };
}
