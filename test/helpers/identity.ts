import { randomBytes } from "node:crypto";
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from "jose";

/** A workload identity issuer for tests: its own key pair and inline JWKS. */
export class TestIssuer {
  private constructor(
    readonly issuer: string,
    readonly name: string,
    readonly alg: string,
    private readonly privateKey: CryptoKey,
    readonly publicJwk: JWK,
  ) {}

  static async create(
    name = "ci",
    alg: "ES256" | "RS256" | "EdDSA" = "ES256",
    issuer = `https://issuer.test/${name}`,
  ): Promise<TestIssuer> {
    const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
    const kid = `${name}-${randomBytes(4).toString("hex")}`;
    const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: "sig" };
    return new TestIssuer(issuer, name, alg, privateKey, publicJwk);
  }

  get jwks(): { keys: JWK[] } {
    return { keys: [this.publicJwk] };
  }

  /** Config entry for `identity.issuers`. */
  config(extra: Record<string, unknown> = {}) {
    return { name: this.name, issuer: this.issuer, jwks: this.jwks, owner: "platform-team", ...extra };
  }

  /**
   * Signs an identity token for `subject`. `claims` override the defaults; `iatOffsetSeconds`
   * moves `iat` (negative = in the past).
   */
  async token(
    subject: string,
    options: {
      audience?: string;
      claims?: JWTPayload;
      expiresInSeconds?: number;
      iatOffsetSeconds?: number;
    } = {},
  ): Promise<string> {
    const now = Math.floor(Date.now() / 1000) + (options.iatOffsetSeconds ?? 0);
    return new SignJWT({ ...options.claims })
      .setProtectedHeader({ alg: this.alg, kid: this.publicJwk.kid as string })
      .setIssuer(this.issuer)
      .setAudience(options.audience ?? "jitkey")
      .setSubject(subject)
      .setIssuedAt(now)
      .setExpirationTime(now + (options.expiresInSeconds ?? 600))
      .sign(this.privateKey);
  }
}
