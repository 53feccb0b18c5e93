import type { PolicyJson } from "@cedar-policy/cedar-wasm/nodejs";

/**
 * Which attributes of the principal, resource and context the policies read, so each
 * request carries only those: handing values to cedar-wasm dominates a decision's cost (two
 * full entities and the context cost several times what evaluating the policies does).
 *
 * Found syntactically, which is complete for Cedar: attributes are only reached through
 * `.`, `[...]` (the same `.` node in JSON) and `has`. A chain used as a value (`x.y like`,
 * `context.task == {...}`) needs everything below it. An entity used as a value needs none
 * of its attributes: entities compare and `in` by id. A miss could only make a policy that
 * reads the attribute fail to evaluate, which denies (see CompiledPolicy.authorize).
 */
export class AttributeUse {
  /** Every path read, and every path on the way to one: `context`, `context.task`, ... */
  readonly #reached = new Set<string>();
  /** Paths whose whole value is used. */
  readonly #whole = new Set<string>();
  readonly #everything: boolean;

  private constructor(everything: boolean) {
    this.#everything = everything;
  }

  /** No pruning: every attribute is sent. */
  static everything(): AttributeUse {
    return new AttributeUse(true);
  }

  static of(policies: readonly PolicyJson[]): AttributeUse {
    const use = new AttributeUse(false);
    for (const policy of policies) use.#visit(policy.conditions, false);
    return use;
  }

  /** Whether a request must carry the attribute at `path` (`context.task.goal`). */
  needs(path: string): boolean {
    if (this.#everything || this.#reached.has(path)) return true;
    for (let end = path.lastIndexOf("."); end > 0; end = path.lastIndexOf(".", end - 1)) {
      if (this.#whole.has(path.slice(0, end))) return true;
    }
    return false;
  }

  /** Whether any attribute under `root` is read at all. */
  needsAny(root: "principal" | "resource" | "context"): boolean {
    return this.#everything || this.#reached.has(root);
  }

  #visit(node: unknown, accessed: boolean): void {
    if (Array.isArray(node)) {
      for (const item of node) this.#visit(item, false);
      return;
    }
    if (!node || typeof node !== "object") return;
    const access = (node as { ".": { left: unknown; attr: string } | undefined })["."];
    const has = (node as { has: { left: unknown; attr: string | string[] } | undefined }).has;
    const path = chainPath(node);
    if (access && path !== undefined) {
      if (!accessed) this.#use(path, true);
      this.#visit(access.left, true);
      return;
    }
    if (has) {
      const left = chainPath(has.left);
      if (left !== undefined) this.#use([left, ...[has.attr].flat()].join("."), false);
      this.#visit(has.left, left !== undefined);
      return;
    }
    if ("Var" in node && path !== undefined && !accessed && path === "context") this.#use(path, true);
    for (const value of Object.values(node)) this.#visit(value, false);
  }

  #use(path: string, whole: boolean): void {
    if (whole) this.#whole.add(path);
    for (let end = path.indexOf("."); end > 0; end = path.indexOf(".", end + 1))
      this.#reached.add(path.slice(0, end));
    this.#reached.add(path);
  }
}

/** `context.task.scopes` for that chain of `.` from a variable; undefined for anything else. */
export function chainPath(expr: unknown): string | undefined {
  if (!expr || typeof expr !== "object") return undefined;
  if ("Var" in expr) return String((expr as { Var: string }).Var);
  const access = (expr as { ".": { left: unknown; attr: string } | undefined })["."];
  if (!access) return undefined;
  const left = chainPath(access.left);
  return left === undefined ? undefined : `${left}.${access.attr}`;
}
