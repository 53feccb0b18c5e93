import type { Effect, PolicyJson } from "@cedar-policy/cedar-wasm/nodejs";

/** A policy's effect and its conditions, as compiled or parsed. */
export interface PolicyOfEffect {
  effect: Effect;
  json: PolicyJson;
}

/**
 * Whether an allow stays an allow when the same request is asked again with a smaller
 * `context.ttlSeconds` — as introspection asks about a live lease, whose remaining lifetime
 * only shrinks. True when every read of `context.ttlSeconds` is a comparison with a literal
 * that a shorter lifetime cannot turn against the request: in a permit, an upper bound
 * (`<=`, `<`) where the condition needs it to hold, or a lower bound (`>=`, `>`) where it
 * needs it to fail; in a forbid, the reverse. Then the permits that held still hold and no
 * forbid that failed can start to hold. The YAML rules' `ttlSeconds <= maxTtlSeconds` is such
 * a bound. Any other use of it, of the whole context, or one under `if` or inside another
 * expression answers false: found syntactically, so a false answer is always safe.
 */
export function allowSurvivesShorterTtl(policies: readonly PolicyOfEffect[]): boolean {
  return policies.every(({ effect, json }) =>
    json.conditions.every(({ kind, body }) =>
      boundsHold(body, kind === "when" ? 1 : -1, effect === "permit" ? 1 : -1),
    ),
  );
}

/** +1 where the condition needs the expression true, -1 where false, 0 where either or unknown. */
type Polarity = 1 | -1 | 0;

/** The comparisons a bound is written with: true for an upper bound when the lifetime is on the left. */
const UPPER: ReadonlyMap<string, boolean> = new Map([
  ["<=", true],
  ["<", true],
  [">=", false],
  [">", false],
]);

function boundsHold(node: unknown, polarity: Polarity, effectSign: 1 | -1): boolean {
  // An expression is an object with one key, its operator; a record literal's keys are the
  // policy author's, so they are never read as operators.
  const entries = node && typeof node === "object" && !Array.isArray(node) ? Object.entries(node) : [];
  if (entries.length !== 1) return false;
  const [op, arg] = entries[0] as [string, unknown];
  const sides = arg as { left?: unknown; right?: unknown; arg?: unknown; attr?: unknown };
  switch (op) {
    case "Value":
    case "Slot":
    case "Unknown":
      return true;
    case "Var":
      // `context` used whole could hold the lifetime anywhere.
      return arg !== "context";
    case ".":
    case "has":
      if (isContext(sides.left)) return !(op === "." && sides.attr === "ttlSeconds");
      return boundsHold(sides.left, 0, effectSign);
    case "&&":
    case "||":
      return boundsHold(sides.left, polarity, effectSign) && boundsHold(sides.right, polarity, effectSign);
    case "!":
      return boundsHold(sides.arg, -polarity as Polarity, effectSign);
    case "if-then-else": {
      const branch = arg as { if: unknown; then: unknown; else: unknown };
      return (
        boundsHold(branch.if, 0, effectSign) &&
        boundsHold(branch.then, polarity, effectSign) &&
        boundsHold(branch.else, polarity, effectSign)
      );
    }
    case "Record":
      return Object.values(arg as object).every((value) => boundsHold(value, 0, effectSign));
    case "Set":
      return (arg as unknown[]).every((item) => boundsHold(item, 0, effectSign));
    case "like":
    case "is":
      return boundsHold(sides.left, 0, effectSign) && (op === "like" || optional(arg, "in", effectSign));
  }
  const bound = ttlBound(op, sides);
  if (bound === "other") return false;
  // An upper bound (+1) must be needed true in a permit and false in a forbid; a lower bound the reverse.
  if (bound !== undefined) return polarity !== 0 && bound * polarity === effectSign;
  // Every other operator takes expressions: `{left, right}`, `{arg}`, or a function's argument list.
  if (Array.isArray(arg)) return arg.every((item) => boundsHold(item, 0, effectSign));
  if (!arg || typeof arg !== "object") return false;
  const operands = Object.entries(arg);
  return (
    operands.length > 0 &&
    operands.every(
      ([name, value]) => ["left", "right", "arg"].includes(name) && boundsHold(value, 0, effectSign),
    )
  );
}

/** An optional operand (`is ... in <expr>`) holds when absent. */
function optional(arg: unknown, name: string, effectSign: 1 | -1): boolean {
  const value = (arg as Record<string, unknown>)[name];
  return value === undefined || boundsHold(value, 0, effectSign);
}

/**
 * +1 for `context.ttlSeconds <= literal` (or `<`, or the literal on the left of `>=`/`>`),
 * -1 for a lower bound, "other" for a comparison of it with anything but a literal, undefined
 * for an operator that is not such a comparison.
 */
function ttlBound(op: string, sides: { left?: unknown; right?: unknown }): 1 | -1 | "other" | undefined {
  const upper = UPPER.get(op);
  if (upper === undefined) return undefined;
  const [left, right] = [isTtlRead(sides.left), isTtlRead(sides.right)];
  if (!left && !right) return undefined;
  if (left && isLiteral(sides.right)) return upper ? 1 : -1;
  if (right && isLiteral(sides.left)) return upper ? -1 : 1;
  return "other";
}

function isTtlRead(node: unknown): boolean {
  const access = (node as { "."?: { left: unknown; attr: string } } | null)?.["."];
  return access?.attr === "ttlSeconds" && isContext(access.left);
}

function isContext(node: unknown): boolean {
  return (node as { Var?: unknown } | null)?.Var === "context";
}

function isLiteral(node: unknown): boolean {
  return typeof (node as { Value?: unknown } | null)?.Value === "number";
}
