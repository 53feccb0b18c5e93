import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import {
  type CryptoKey,
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  importJWK,
  importPKCS8,
  type JWK,
} from "jose";

/** Algorithms the broker signs credentials with. */
export const SIGNING_ALGORITHMS = ["ES256", "EdDSA"] as const;
export type SigningAlgorithm = (typeof SIGNING_ALGORITHMS)[number];

/** One private signing key with its public half. */
export interface SigningKey {
  readonly kid: string;
  readonly alg: SigningAlgorithm;
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
}

/** The broker's signing keys: one per algorithm, public halves served at the JWKS route. */
export class SigningKeyring {
  readonly #keys = new Map<SigningAlgorithm, SigningKey>();

  private constructor(keys: SigningKey[]) {
    for (const key of keys) this.#keys.set(key.alg, key);
  }

  /** The key that signs with `alg`. */
  keyFor(alg: SigningAlgorithm): SigningKey {
    const key = this.#keys.get(alg);
    if (!key) throw new Error(`no ${alg} signing key is loaded`);
    return key;
  }

  /** The public JWK Set for `/.well-known/jwks.json`. */
  publicJwks(): { keys: JWK[] } {
    return { keys: [...this.#keys.values()].map((key) => key.publicJwk) };
  }

  /**
   * Loads the keys from `keyFile` (a private JWK Set, or a PKCS#8 PEM for `pemAlgorithm`)
   * or, without one, from `generatedFile`, generating and saving (mode 0600) any missing
   * algorithm there so that restarts keep issued credentials verifiable.
   */
  static async load(options: {
    keyFile?: string;
    generatedFile: string;
    pemAlgorithm?: SigningAlgorithm;
  }): Promise<SigningKeyring> {
    if (options.keyFile) {
      const text = await readFile(options.keyFile, "utf8");
      if (text.includes("-----BEGIN")) {
        const alg = options.pemAlgorithm ?? "ES256";
        const privateKey = await importPKCS8(text, alg, { extractable: true });
        return new SigningKeyring([await describe(privateKey, alg)]);
      }
      return new SigningKeyring(await importJwkSet(text, options.keyFile));
    }
    const stored = existsSync(options.generatedFile)
      ? await importJwkSet(await readFile(options.generatedFile, "utf8"), options.generatedFile)
      : [];
    const missing = SIGNING_ALGORITHMS.filter((alg) => !stored.some((key) => key.alg === alg));
    if (missing.length > 0) {
      for (const alg of missing) {
        const { privateKey } = await generateKeyPair(alg, {
          extractable: true,
          crv: alg === "EdDSA" ? "Ed25519" : undefined,
        });
        stored.push(await describe(privateKey, alg));
      }
      const privateJwks = await Promise.all(
        stored.map(async (key) => ({ ...(await exportJWK(key.privateKey)), kid: key.kid, alg: key.alg })),
      );
      await mkdir(dirname(options.generatedFile), { recursive: true, mode: 0o700 });
      await writeFile(options.generatedFile, `${JSON.stringify({ keys: privateJwks }, null, 2)}\n`, {
        mode: 0o600,
      });
    }
    return new SigningKeyring(stored);
  }
}

async function describe(privateKey: CryptoKey, alg: SigningAlgorithm): Promise<SigningKey> {
  const { d: _private, ...publicPart } = await exportJWK(privateKey);
  const kid = await calculateJwkThumbprint(publicPart);
  return { kid, alg, privateKey, publicJwk: { ...publicPart, kid, alg, use: "sig" } };
}

async function importJwkSet(text: string, file: string): Promise<SigningKey[]> {
  const parsed = JSON.parse(text) as { keys?: JWK[] };
  if (!Array.isArray(parsed.keys)) throw new Error(`${file}: expected a JWK Set ({"keys": [...]})`);
  return Promise.all(
    parsed.keys.map(async (jwk) => {
      const alg = jwk.alg as SigningAlgorithm;
      if (!SIGNING_ALGORITHMS.includes(alg))
        throw new Error(`${file}: key alg must be one of ${SIGNING_ALGORITHMS}`);
      const privateKey = (await importJWK(jwk, alg, { extractable: true })) as CryptoKey;
      return describe(privateKey, alg);
    }),
  );
}
