import { mkdtemp, readFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from "jose";
import { createJwtAdapter } from "../../adapters/jwt/jwt-adapter.ts";
import { SigningKeyring } from "../../adapters/jwt/signing-keys.ts";
import type { IssuedCredential } from "../../adapters/types.ts";
import { describeAdapterConformance, newTestLeaseId } from "../conformance/adapter-conformance.ts";
import { testAdapterContext } from "../helpers/adapter-context.ts";

async function keyring() {
  const dir = await mkdtemp(join(tmpdir(), "jitkey-jwt-"));
  const file = join(dir, "signing-keys.json");
  return { file, keys: await SigningKeyring.load({ generatedFile: file }) };
}

function context(keys: SigningKeyring) {
  return testAdapterContext({ resource: "demo-api", signingKeys: keys });
}

for (const algorithm of ["ES256", "EdDSA"] as const) {
  describeAdapterConformance(`jwt (${algorithm})`, async () => {
    const { keys } = await keyring();
    return {
      adapter: createJwtAdapter({ audience: "https://demo-api.example", algorithm }, context(keys)),
      resource: "demo-api",
      scopes: ["read"],
      // A broker-signed token creates nothing in a backend: what exists is the token, whose jti is the lease id.
      async findCreated(_leaseId: string, issued?: IssuedCredential) {
        if (!issued) return [];
        const { jti } = decodeJwt(issued.credential.token as string);
        return [`jwt jti=${jti}`];
      },
    };
  });
}

describe("jwt adapter", () => {
  it("signs tokens verifiable with the published JWKS, with the claims API.md names", async () => {
    const { keys } = await keyring();
    const adapter = createJwtAdapter(
      { audience: "https://demo-api.example", algorithm: "EdDSA" },
      context(keys),
    );
    const leaseId = newTestLeaseId();
    const expiresAt = new Date(Math.floor(Date.now() / 1000 + 60) * 1000);
    const issued = await adapter.issue({
      leaseId,
      taskId: "tsk_1",
      agentId: "ci:repo:a/b",
      resource: "demo-api",
      scopes: ["read", "write"],
      expiresAt,
    });
    const token = issued.credential.token as string;
    expect(decodeProtectedHeader(token).alg).to.equal("EdDSA");
    const { payload } = await jwtVerify(token, createLocalJWKSet(keys.publicJwks()), {
      issuer: "https://jitkey.test",
      audience: "https://demo-api.example",
    });
    expect(payload).to.include({ sub: "ci:repo:a/b", jti: leaseId, task_id: "tsk_1", scope: "read write" });
    expect(payload.exp).to.equal(expiresAt.getTime() / 1000);
    expect(issued.credential).to.include({ type: "bearer", expiresAt: expiresAt.toISOString() });
  });

  it("keeps generated keys in the data directory (mode 0600) so restarts verify old tokens", async () => {
    const { file, keys } = await keyring();
    const again = await SigningKeyring.load({ generatedFile: file });
    expect(again.publicJwks()).to.deep.equal(keys.publicJwks());
    expect((await stat(file)).mode & 0o777).to.equal(0o600);
    expect(JSON.parse(await readFile(file, "utf8")).keys).to.have.length(2);
    for (const jwk of keys.publicJwks().keys) expect(jwk).to.not.have.property("d");
  });

  it("rejects options it does not know, naming the field", () => {
    expect(() =>
      createJwtAdapter({ audience: "x", algorithm: "HS256" }, context({} as SigningKeyring)),
    ).to.throw(/algorithm/);
    expect(() => createJwtAdapter({ audience: "x", extra: 1 }, context({} as SigningKeyring))).to.throw(
      /extra/,
    );
    expect(() => createJwtAdapter({}, context({} as SigningKeyring))).to.throw(/audience/);
  });
});
