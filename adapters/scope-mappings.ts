import { ZodError } from "zod";

/**
 * Fails start-up, naming the field, when a scope the resource declares has no mapping in the
 * adapter's options (statements, grants, OAuth scopes): otherwise the first mint of that scope
 * would be the first to find out.
 */
export function requireScopeMappings(
  declared: readonly string[],
  mapped: Readonly<Record<string, unknown>>,
  field: string,
): void {
  const missing = declared.filter((scope) => !Object.hasOwn(mapped, scope));
  if (missing.length === 0) return;
  throw new ZodError(
    missing.map((scope) => ({
      code: "custom" as const,
      path: [field, scope],
      message: `the resource declares scope "${scope}", but ${field} has nothing for it`,
      input: undefined,
    })),
  );
}
