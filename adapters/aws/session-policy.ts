/**
 * The inline session policy of a lease: the union of the statements configured for each scope
 * it was granted. STS intersects it with the role's own policies, so a lease can do no more
 * than its scopes allow, and no more than the role allows.
 */

/** AWS's limit on the plaintext of an AssumeRole session policy. */
export const SESSION_POLICY_MAX_CHARS = 2048;

/** The minified policy document allowing `statements` (identical statements once). */
export function sessionPolicyFor(statements: readonly object[]): string {
  const unique = new Map<string, object>();
  for (const statement of statements) unique.set(JSON.stringify(statement), statement);
  return JSON.stringify({ Version: "2012-10-17", Statement: [...unique.values()] });
}

/**
 * The session policy for a lease's scopes, in the order the resource configures them, so the
 * same grant always yields the same document. Throws on a scope the options do not configure.
 */
export function leaseSessionPolicy(
  scopeStatements: Readonly<Record<string, readonly object[]>>,
  granted: readonly string[],
): string {
  const unknown = granted.filter((scope) => !Object.hasOwn(scopeStatements, scope));
  if (unknown.length > 0) throw new Error(`scopes without IAM statements: ${unknown.join(", ")}`);
  const wanted = new Set(granted);
  const statements = Object.entries(scopeStatements)
    .filter(([scope]) => wanted.has(scope))
    .flatMap(([, list]) => list);
  return sessionPolicyFor(statements);
}
