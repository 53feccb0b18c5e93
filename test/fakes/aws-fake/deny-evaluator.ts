/**
 * A small, test-side evaluator of explicit Deny statements, so tests can prove that a revoked
 * session is refused and a live one is not. It is NOT an AWS API and NOT IAM's evaluation
 * logic: it answers only "does some Deny statement in these identity policies match this call
 * of this session?", following the IAM User Guide's condition-operator semantics for the
 * operators it knows (several keys in a block: all must match; several values for a key: any
 * may match; a key the request lacks: no match), and throws on anything else so a test can
 * never pass by the evaluator ignoring a condition.
 */

/** What a call made with a role session's credentials brings to the evaluation. */
export interface SessionCallContext {
  /** Session tags (`aws:PrincipalTag/<key>`); keys compare case-insensitively, as in IAM. */
  readonly principalTags: Readonly<Record<string, string>>;
  /** When STS issued the session (`aws:TokenIssueTime`). */
  readonly tokenIssueTime: Date;
  /** The action called, e.g. `s3:GetObject`. */
  readonly action: string;
  /** The resource acted on; default `*` (a statement limited to some resources then never matches). */
  readonly resource?: string;
}

interface Statement {
  Effect?: unknown;
  Action?: unknown;
  NotAction?: unknown;
  Resource?: unknown;
  NotResource?: unknown;
  Condition?: Record<string, Record<string, unknown>>;
}

const list = (value: unknown): string[] =>
  value === undefined ? [] : (Array.isArray(value) ? value : [value]).map(String);

/** IAM's `*` / `?` wildcards in actions and resources; actions compare case-insensitively. */
function globMatches(pattern: string, value: string, ignoreCase: boolean): boolean {
  const source = pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${source}$`, ignoreCase ? "i" : "").test(value);
}

function keyValues(key: string, call: SessionCallContext): string[] | undefined {
  const lower = key.toLowerCase();
  if (lower === "aws:tokenissuetime") return [call.tokenIssueTime.toISOString()];
  if (lower.startsWith("aws:principaltag/")) {
    const tagKey = lower.slice("aws:principaltag/".length);
    const found = Object.entries(call.principalTags).find(([k]) => k.toLowerCase() === tagKey);
    return found ? [found[1]] : undefined;
  }
  throw new Error(`deny evaluator: condition key ${key} is not supported`);
}

function parseDate(value: string): number {
  const time = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value);
  if (!Number.isFinite(time)) throw new Error(`deny evaluator: ${value} is not a date`);
  return time;
}

function operatorMatches(operator: string, actual: string[] | undefined, wanted: string[]): boolean {
  if (actual === undefined) return false;
  switch (operator) {
    case "StringEquals":
    case "ForAnyValue:StringEquals":
      return actual.some((value) => wanted.includes(value));
    case "DateLessThan":
      return actual.some((value) => wanted.some((limit) => parseDate(value) < parseDate(limit)));
    case "DateGreaterThan":
      return actual.some((value) => wanted.some((limit) => parseDate(value) > parseDate(limit)));
    default:
      throw new Error(`deny evaluator: condition operator ${operator} is not supported`);
  }
}

function statementMatches(statement: Statement, call: SessionCallContext): boolean {
  const actionMatches = (patterns: string[]) => patterns.some((p) => globMatches(p, call.action, true));
  if (statement.Action !== undefined && !actionMatches(list(statement.Action))) return false;
  if (statement.NotAction !== undefined && actionMatches(list(statement.NotAction))) return false;
  const resource = call.resource ?? "*";
  const resourceMatches = (patterns: string[]) => patterns.some((p) => globMatches(p, resource, false));
  if (statement.Resource !== undefined && !resourceMatches(list(statement.Resource))) return false;
  if (statement.NotResource !== undefined && resourceMatches(list(statement.NotResource))) return false;
  for (const [operator, block] of Object.entries(statement.Condition ?? {})) {
    for (const [key, wanted] of Object.entries(block)) {
      if (!operatorMatches(operator, keyValues(key, call), list(wanted))) return false;
    }
  }
  return true;
}

/** Whether any Deny statement of `policyDocuments` (JSON) matches the call. */
export function isExplicitlyDenied(policyDocuments: Iterable<string>, call: SessionCallContext): boolean {
  for (const document of policyDocuments) {
    const parsed = JSON.parse(document) as { Statement?: unknown };
    const statements = Array.isArray(parsed.Statement)
      ? (parsed.Statement as Statement[])
      : parsed.Statement
        ? [parsed.Statement as Statement]
        : [];
    for (const statement of statements) {
      if (statement.Effect === "Deny" && statementMatches(statement, call)) return true;
    }
  }
  return false;
}
