import { randomBytes } from "node:crypto";
import { sha256Hex } from "../../broker/operators/principal-tokens.ts";

/** A second operator, for approvals that need two. */
export const BOB = { name: "bob", token: `op-bob-${randomBytes(12).toString("hex")}` };

/**
 * Adds to the default test config: a second operator (bob), a `restricted` resource `payroll`
 * that `ci:agent-*` may ask for with an operator's approval and `ci:auto-*` is auto-approved
 * for, and `docs-api` (public) that `ci:agent-*` may ask for, up to restricted data.
 */
export function withApprovalFixtures(raw: Record<string, unknown>): void {
  (raw.operators as Record<string, unknown>[]).push({ name: BOB.name, tokenSha256: sha256Hex(BOB.token) });
  const resources = raw.resources as Record<string, unknown>[];
  resources.push(
    {
      name: "payroll",
      adapter: "jwt",
      classification: "restricted",
      scopes: ["read", "write"],
      maxTtlSeconds: 300,
      owner: "finance",
      options: { audience: "https://payroll.example" },
    },
    {
      name: "docs-api",
      adapter: "jwt",
      classification: "public",
      scopes: ["read"],
      maxTtlSeconds: 300,
      options: { audience: "https://docs-api.example" },
    },
  );
  const policies = raw.policies as Record<string, unknown>[];
  policies.unshift(
    {
      name: "payroll-approval",
      agents: ["ci:agent-*"],
      resources: ["payroll", "docs-api"],
      scopes: ["read", "write"],
      maxClassification: "restricted",
      autoApprove: false,
      maxTtlSeconds: 300,
    },
    {
      name: "payroll-auto",
      agents: ["ci:auto-*"],
      resources: ["payroll", "demo-api"],
      scopes: ["read"],
      maxClassification: "restricted",
      autoApprove: true,
      maxTtlSeconds: 300,
    },
  );
}

/** Bob's Authorization header. */
export function bobHeaders(): { Authorization: string } {
  return { Authorization: `Bearer ${BOB.token}` };
}
