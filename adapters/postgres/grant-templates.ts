import pg from "pg";

/**
 * The placeholders a grant template may use. Each is replaced by a safely quoted SQL token,
 * never by raw text: identifiers with `escapeIdentifier`, values with `escapeLiteral`.
 */
export const PLACEHOLDERS = {
  /** The per-lease role, as a quoted identifier: `"jk_lse_…"`. */
  role: "identifier",
  /** The database the broker is connected to, as a quoted identifier. */
  database: "identifier",
  /** The jitkey lease id, as a string literal. */
  lease_id: "literal",
  /** When the lease ends, as a `timestamptz` string literal (ISO 8601, UTC). */
  expires_at: "literal",
} as const;

export type Placeholder = keyof typeof PLACEHOLDERS;

/** The values a template is rendered with; unquoted here, quoted by {@link renderTemplate}. */
export type PlaceholderValues = Readonly<Record<Placeholder, string>>;

const PLACEHOLDER_PATTERN = /\{\{\s*([A-Za-z_]+)\s*\}\}/g;

/**
 * Statements that would break the one transaction an issue runs in (its atomicity is what
 * guarantees a failed grant leaves nothing behind) or change who the following statements run
 * as. Matched on the statement's first keyword, which is reliable; nothing else about the SQL
 * is judged: templates are trusted configuration, written by whoever may edit the config file.
 */
const FORBIDDEN_FIRST_KEYWORDS = new Set([
  "BEGIN",
  "START",
  "COMMIT",
  "END",
  "ROLLBACK",
  "ABORT",
  "SAVEPOINT",
  "RELEASE",
  "PREPARE",
  "SET",
  "RESET",
  "DISCARD",
]);

/** The first keyword of a statement, after whitespace and comments (which may nest in PostgreSQL). */
export function firstKeyword(sql: string): string {
  let index = 0;
  while (index < sql.length) {
    if (/\s/.test(sql[index] ?? "")) {
      index += 1;
    } else if (sql.startsWith("--", index)) {
      const end = sql.indexOf("\n", index);
      index = end < 0 ? sql.length : end + 1;
    } else if (sql.startsWith("/*", index)) {
      let depth = 0;
      do {
        if (sql.startsWith("/*", index)) {
          depth += 1;
          index += 2;
        } else if (sql.startsWith("*/", index)) {
          depth -= 1;
          index += 2;
        } else {
          index += 1;
        }
      } while (depth > 0 && index < sql.length);
    } else {
      break;
    }
  }
  return (/^[A-Za-z_]+/.exec(sql.slice(index))?.[0] ?? "").toUpperCase();
}

/**
 * Why a template cannot be used, or undefined when it can. Checks only what can be checked
 * reliably without a server: known placeholders, `{{role}}` present, no stray braces of a
 * mistyped placeholder, and no transaction-control or session statement. That each template is
 * a single statement is enforced by the server (it runs through the extended query protocol,
 * which refuses several commands in one).
 */
export function templateProblem(template: string): string | undefined {
  if (template.trim().length === 0) return "is empty";
  const names = [...template.matchAll(PLACEHOLDER_PATTERN)].map((match) => match[1] ?? "");
  const unknown = names.filter((name) => !(name in PLACEHOLDERS));
  if (unknown.length > 0) {
    return `uses unknown placeholder {{${unknown[0]}}}; known: ${Object.keys(PLACEHOLDERS)
      .map((name) => `{{${name}}}`)
      .join(", ")}`;
  }
  const rest = template.replace(PLACEHOLDER_PATTERN, "");
  if (rest.includes("{{") || rest.includes("}}")) return "has a malformed {{placeholder}}";
  if (!names.includes("role")) return "must name the lease's role with {{role}}";
  const keyword = firstKeyword(template);
  if (FORBIDDEN_FIRST_KEYWORDS.has(keyword)) {
    return `starts with ${keyword}: transaction control and session settings would break the issue's single transaction`;
  }
  return undefined;
}

/** Replaces every placeholder with its quoted value. The template must have passed {@link templateProblem}. */
export function renderTemplate(template: string, values: PlaceholderValues): string {
  return template.replace(PLACEHOLDER_PATTERN, (_match, name: string) => {
    const placeholder = name as Placeholder;
    const value = values[placeholder];
    return PLACEHOLDERS[placeholder] === "identifier" ? pg.escapeIdentifier(value) : pg.escapeLiteral(value);
  });
}
