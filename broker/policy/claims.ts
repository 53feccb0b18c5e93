import type { CedarValueJson } from "@cedar-policy/cedar-wasm/nodejs";
import type { ClaimType, PolicyRule } from "../config.ts";
import type { AgentClaims, ClaimValue } from "../identity/principal.ts";
import { Glob } from "./glob.ts";
import { PolicyLoadError } from "./policy-errors.ts";

/** Claims a task records at most, as JSON characters: enough for CI claims, bounded per task. */
export const RECORDED_CLAIMS_MAX_LENGTH = 4096;

/** The claims policies can see, with their types: the Cedar `Jitkey::Claims` record. */
export type DeclaredClaims = ReadonlyMap<string, ClaimType>;

/**
 * Which claims policies can see: every claim a YAML rule's `claims:` names (a `string`
 * unless `policyClaims` says otherwise) and every claim `policyClaims` declares.
 * Throws {@link PolicyLoadError} for a condition its claim's type cannot honour.
 */
export function declareClaims(
  rules: readonly PolicyRule[],
  policyClaims: Readonly<Record<string, ClaimType>>,
  ruleName: (index: number) => string,
): DeclaredClaims {
  const declared = new Map<string, ClaimType>(Object.entries(policyClaims));
  rules.forEach((rule, index) => {
    for (const [claim, patterns] of Object.entries(rule.claims ?? {})) {
      const type = declared.get(claim) ?? "string";
      declared.set(claim, type);
      const where = `policies.${index} (${ruleName(index)}) claims.${claim}`;
      if (type === "number" || type === "boolean") {
        throw new PolicyLoadError(
          `${where}: claim ${claim} is declared ${type}; YAML conditions match strings`,
        );
      }
      // Cedar has no "some element is like": a list claim can only be matched exactly.
      if (type === "string[]" && [patterns].flat().some((pattern) => !new Glob(pattern).exact)) {
        throw new PolicyLoadError(`${where}: claim ${claim} is a list; its patterns cannot use *`);
      }
    }
  });
  return declared;
}

/** A YAML rule's claim condition, ready to test in TypeScript and to compile to Cedar. */
export interface ClaimCondition {
  claim: string;
  type: ClaimType;
  patterns: Glob[];
}

export function claimConditions(rule: PolicyRule, declared: DeclaredClaims): ClaimCondition[] {
  return Object.entries(rule.claims ?? {}).map(([claim, patterns]) => ({
    claim,
    type: declared.get(claim) ?? "string",
    patterns: [patterns].flat().map((pattern) => new Glob(pattern)),
  }));
}

/**
 * Whether an agent's claims satisfy every condition: a string claim must match one of the
 * patterns, a list claim must hold one of the values. A missing claim, or one of another
 * type, satisfies nothing.
 */
export function claimsSatisfy(conditions: readonly ClaimCondition[], claims: DeclaredClaimValues): boolean {
  return conditions.every(({ claim, type, patterns }) => {
    const value = claims[claim];
    if (value === undefined) return false;
    if (type === "string[]") {
      return Array.isArray(value) && value.some((item) => patterns.some((glob) => glob.matches(item)));
    }
    return typeof value === "string" && patterns.some((glob) => glob.matches(value));
  });
}

/** An agent's claims reduced to the declared ones, each of its declared type. */
export type DeclaredClaimValues = Readonly<Record<string, string | number | boolean | readonly string[]>>;

/**
 * Keeps the declared claims whose value has the declared type (a single string counts as a
 * one-element list). Cedar's Long is an integer, so a fractional number is left out.
 */
export function declaredClaimValues(
  claims: AgentClaims | undefined,
  declared: DeclaredClaims,
): DeclaredClaimValues {
  const kept: Record<string, ClaimValue> = {};
  if (!claims) return kept;
  for (const [claim, type] of declared) {
    const value = claims[claim];
    const typed = typedClaim(value, type);
    if (typed !== undefined) kept[claim] = typed;
  }
  return kept;
}

function typedClaim(value: ClaimValue | undefined, type: ClaimType): ClaimValue | undefined {
  switch (type) {
    case "string":
      return typeof value === "string" ? value : undefined;
    case "string[]":
      if (typeof value === "string") return [value];
      return Array.isArray(value) ? value : undefined;
    case "number":
      return typeof value === "number" && Number.isSafeInteger(value) ? value : undefined;
    case "boolean":
      return typeof value === "boolean" ? value : undefined;
  }
}

/** The claims as a Cedar record value. */
export function cedarClaims(claims: DeclaredClaimValues): Record<string, CedarValueJson> {
  const record: Record<string, CedarValueJson> = {};
  for (const [claim, value] of Object.entries(claims)) {
    record[claim] = typeof value === "object" ? [...value] : value;
  }
  return record;
}

/**
 * The claims a task should record when it is created, so that introspection and the
 * re-check after a policy reload see what the agent presented: the declared claims the
 * agent has — those in `first` (the deciding rules' claims) before the others — as many as
 * fit in {@link RECORDED_CLAIMS_MAX_LENGTH}.
 */
export function claimsToRecord(
  claims: AgentClaims | undefined,
  declared: DeclaredClaims,
  first: readonly string[] = [],
): Record<string, ClaimValue> {
  const values = declaredClaimValues(claims, declared);
  const order = [...new Set([...first, ...Object.keys(values)])];
  const recorded: Record<string, ClaimValue> = {};
  let length = 2;
  for (const claim of order) {
    const value = values[claim];
    if (value === undefined) continue;
    const size = JSON.stringify(claim).length + JSON.stringify(value).length + 2;
    if (length + size > RECORDED_CLAIMS_MAX_LENGTH) continue;
    recorded[claim] = value;
    length += size;
  }
  return recorded;
}
