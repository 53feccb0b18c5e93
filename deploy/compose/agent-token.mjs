// Signs a DEMO agent identity token for the compose stack (deploy/compose/jitkey.yaml).
//
// DEMO KEY: the private key below is published in this repository. It exists only so the
// compose walkthrough works out of the box; anyone can sign tokens with it. Real agents get
// their identity from a real issuer (SPIFFE, Kubernetes, GitHub Actions OIDC, ...).
//
// Usage (from the repository root, after `npm ci`):
//   node deploy/compose/agent-token.mjs [subject] [ttlSeconds]
// or inside the running broker container, where jose is installed:
//   docker compose exec -T broker node --input-type=module - < deploy/compose/agent-token.mjs
// Prints the JWT on stdout. The agent id the broker sees is `demo:<subject>`.
import { importJWK, SignJWT } from "jose";

const DEMO_AGENT_PRIVATE_JWK = {
  kty: "EC",
  crv: "P-256",
  x: "f3jBEep6ClqBzUHq-4GPIcJXnUSdt2vcvh0jVYDY-GE",
  y: "MNeOy4rkfvba8MNWpo8OQaJ58XKB57WXqhSCqo9sDiY",
  d: "tAgFK8tXllEE6pgL9VzTemKWRxHVXyfRrKmIRkt6xt0",
};
const KID = "demo-agent-ocN_IYZW";
const ISSUER = "https://agents.jitkey.demo";
const AUDIENCE = "jitkey";

// With `node --input-type=module -` there are no script arguments: use the defaults.
const subject = process.argv[2] ?? "reporting-agent";
const ttlSeconds = Number(process.argv[3] ?? 900);

const key = await importJWK(DEMO_AGENT_PRIVATE_JWK, "ES256");
const token = await new SignJWT({})
  .setProtectedHeader({ alg: "ES256", kid: KID, typ: "JWT" })
  .setIssuer(ISSUER)
  .setAudience(AUDIENCE)
  .setSubject(subject)
  .setIssuedAt()
  .setExpirationTime(`${ttlSeconds}s`)
  .sign(key);
process.stdout.write(`${token}\n`);
