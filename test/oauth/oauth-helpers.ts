import { createHash, randomUUID } from "node:crypto";
import {
  type CryptoKey,
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  type JWK,
  type JWTPayload,
  SignJWT,
} from "jose";
import type { Test } from "supertest";
import type { TestBroker } from "../helpers/broker.ts";
import type { AgentSession } from "../helpers/flows.ts";

export const EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange";
export const JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt";

/** A DPoP key pair held by a test client, signing proofs (RFC 9449 §4.2). */
export class DpopKey {
  private constructor(
    /** The key pair, for a client library that signs its own proofs. */
    readonly keyPair: { privateKey: CryptoKey; publicKey: CryptoKey },
    readonly publicJwk: JWK,
    readonly jkt: string,
  ) {}

  static async create(alg: "ES256" | "EdDSA" = "ES256"): Promise<DpopKey> {
    const keyPair = await generateKeyPair(alg, { extractable: true });
    const publicJwk = await exportJWK(keyPair.publicKey);
    return new DpopKey(keyPair, publicJwk, await calculateJwkThumbprint(publicJwk));
  }

  /**
   * A proof for `method url`. `claims` replace the defaults (`iat` now, a fresh `jti`);
   * `header` replaces header fields (to build broken proofs).
   */
  async proof(
    method: string,
    url: string,
    options: { claims?: JWTPayload; header?: Record<string, unknown>; accessToken?: string } = {},
  ): Promise<string> {
    const alg = this.publicJwk.kty === "OKP" ? "EdDSA" : "ES256";
    return new SignJWT({
      htm: method,
      htu: url,
      iat: Math.floor(Date.now() / 1000),
      jti: randomUUID(),
      ...(options.accessToken ? { ath: sha256Base64url(options.accessToken) } : {}),
      ...options.claims,
    })
      .setProtectedHeader({ alg, typ: "dpop+jwt", jwk: this.publicJwk, ...options.header })
      .sign(this.keyPair.privateKey);
  }
}

export function sha256Base64url(text: string): string {
  return createHash("sha256").update(text).digest("base64url");
}

/** The broker's public URL of a route, as a DPoP proof's `htu` names it. */
export function brokerUrl(t: TestBroker, path: string): string {
  return `${t.broker.issuer}${path}`;
}

/** `POST /v1/token` as the agent, form-encoded, with an optional DPoP proof. */
export function exchange(
  t: TestBroker,
  agent: AgentSession | undefined,
  form: Record<string, string | string[]>,
  dpop?: string,
): Test {
  let request = t.http.post("/v1/token").type("form");
  if (agent) request = request.set(agent.headers);
  if (dpop) request = request.set("DPoP", dpop);
  return request.send(form);
}

/** The usual exchange form: the subject token, delegated to `actorToken` when given. */
export function exchangeForm(
  subjectToken: string,
  extra: Record<string, string | string[]> = {},
  actorToken?: string,
): Record<string, string | string[]> {
  return {
    grant_type: EXCHANGE_GRANT,
    subject_token: subjectToken,
    subject_token_type: JWT_TOKEN_TYPE,
    ...(actorToken ? { actor_token: actorToken, actor_token_type: JWT_TOKEN_TYPE } : {}),
    ...extra,
  };
}

/** Introspects a token as the test introspector; returns the RFC 7662 answer. */
export async function introspect(t: TestBroker, token: string): Promise<Record<string, unknown>> {
  const res = await t.http
    .post("/v1/introspect")
    .set("Authorization", `Bearer ${t.introspectorToken}`)
    .type("form")
    .send({ token })
    .expect(200);
  return res.body;
}
