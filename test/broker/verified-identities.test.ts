import { expect } from "chai";
import { ManualClock } from "../../broker/clock.ts";
import { UnauthenticatedError } from "../../broker/errors.ts";
import { AgentVerifier } from "../../broker/identity/agent-verifier.ts";
import type { AgentPrincipal } from "../../broker/identity/principal.ts";
import { VerifiedIdentities } from "../../broker/identity/verified-identities.ts";
import { TestIssuer } from "../helpers/identity.ts";

describe("verified identity cache", () => {
  let issuer: TestIssuer;
  let clock: ManualClock;
  let calls: number;
  let cache: VerifiedIdentities;
  const make = (options: { windowMs?: number; maxEntries?: number; maxTokenAgeSeconds?: number } = {}) => {
    const verifier = new AgentVerifier(
      {
        audience: "jitkey",
        maxTokenAgeSeconds: options.maxTokenAgeSeconds ?? 3600,
        clockSkewSeconds: 0,
        jwksTimeoutSeconds: 5,
        issuers: [{ ...issuer.config(), agentIdClaim: "sub" }],
      },
      () => clock.now(),
    );
    return new VerifiedIdentities(
      {
        verify: (token: string): Promise<AgentPrincipal> => {
          calls += 1;
          return verifier.verify(token);
        },
      },
      { clock, maxTokenAgeSeconds: options.maxTokenAgeSeconds ?? 3600, ...options },
    );
  };
  beforeEach(async () => {
    issuer = await TestIssuer.create("ci");
    clock = new ManualClock();
    calls = 0;
    cache = make();
  });

  it("checks a token's signature once and answers the same agent after that", async () => {
    const token = await issuer.token("repo:acme/app");
    const first = await cache.verify(token);
    const second = await cache.verify(token);
    expect(second).to.deep.equal(first);
    expect(first.id).to.equal("ci:repo:acme/app");
    expect(calls).to.equal(1);
  });

  it("checks again, and refuses, once the token has expired", async () => {
    const token = await issuer.token("repo:acme/app", { expiresInSeconds: 30 });
    await cache.verify(token);
    clock.advance(31_000);
    let error: unknown;
    await cache.verify(token).catch((e: unknown) => (error = e));
    expect(error).to.be.instanceOf(UnauthenticatedError);
    expect(calls).to.equal(2);
  });

  it("checks again after the window, so a withdrawn key stops being trusted", async () => {
    cache = make({ windowMs: 10_000 });
    const token = await issuer.token("repo:acme/app");
    await cache.verify(token);
    clock.advance(9_000);
    await cache.verify(token);
    expect(calls).to.equal(1);
    clock.advance(2_000);
    await cache.verify(token);
    expect(calls).to.equal(2);
  });

  it("never remembers a token that did not verify, and keeps at most maxEntries", async () => {
    const forged = `${(await issuer.token("a")).slice(0, -4)}AAAA`;
    for (let i = 0; i < 2; i++) await cache.verify(forged).catch(() => undefined);
    expect(calls).to.equal(2);
    cache = make({ maxEntries: 2 });
    calls = 0;
    const tokens = await Promise.all(["a", "b", "c"].map((subject) => issuer.token(subject)));
    for (const token of tokens) await cache.verify(token);
    await cache.verify(tokens[2] as string);
    expect(calls).to.equal(3);
    // The oldest went first.
    await cache.verify(tokens[0] as string);
    expect(calls).to.equal(4);
  });
});
