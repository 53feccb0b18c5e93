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

const UPPER: Record<string, boolean> = { "<=": true, "<": true, ">=": false, ">": false };

function boundsHold(node: unknown, polarity: Polarity, effectSign: 1 | -1): boolean {
  if (Array.isArray(node)) return node.every((item) => boundsHold(item, 0, effectSign));
  if (!node || typeof node !== "object") return true;
  const bound = ttlBound(node as Record<string, unknown>);
  if (bound === "other") return false;
  // An upper bound (+1) must be needed true in a permit and false in a forbid; a lower bound the reverse.
  if (bound !== undefined) return polarity !== 0 && bound * polarity === effectSign;
  const op = node as Record<string, { left?: unknown; right?: unknown; arg?: unknown } | undefined>;
  if (isTtlRead(node)) return false;
  if ((node as { Var?: unknown }).Var === "context") return false;
  const access = op["."] ?? op.has;
  if (access) return isContext(access.left) || boundsHold(access.left, 0, effectSign);
  const logical = op["&&"] ?? op["||"];
  if (logical)
    return boundsHold(logical.left, polarity, effectSign) && boundsHold(logical.right, polarity, effectSign);
  const not = op["!"];
  if (not) return boundsHold(not.arg, -polarity as Polarity, effectSign);
  const branch = (node as { "if-then-else"?: { if: unknown; then: unknown; else: unknown } })["if-then-else"];
  if (branch)
    return (
      boundsHold(branch.if, 0, effectSign) &&
      boundsHold(branch.then, polarity, effectSign) &&
      boundsHold(branch.else, polarity, effectSign)
    );
  return Object.values(node).every((value) => boundsHold(value, 0, effectSign));
}

/**
 * +1 for `context.ttlSeconds <= literal` (or `<`, or the literal on the left of `>=`/`>`),
 * -1 for a lower bound, "other" for a comparison of it with anything but a literal, undefined
 * for a node that is not a comparison of it.
 */
function ttlBound(node: Record<string, unknown>): 1 | -1 | "other" | undefined {
  for (const [op, upper] of Object.entries(UPPER)) {
    const sides = node[op] as { left: unknown; right: unknown } | undefined;
    if (!sides) continue;
    const [left, right] = [isTtlRead(sides.left), isTtlRead(sides.right)];
    if (!left && !right) return undefined;
    if (left && isLiteral(sides.right)) return upper ? 1 : -1;
    if (right && isLiteral(sides.left)) return upper ? -1 : 1;
    return "other";
  }
  return undefined;
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
