import type { PatternElem } from "@cedar-policy/cedar-wasm/nodejs";

/**
 * A glob where `*` matches any run of characters (slashes and the empty run included) and
 * every other character, backslash included, stands for itself. Agent globs and claim
 * patterns use it; it compiles to a Cedar `like` pattern with the same meaning.
 */
export class Glob {
  readonly #parts: readonly string[];
  readonly #regex: RegExp | undefined;

  constructor(readonly source: string) {
    this.#parts = source.split("*");
    this.#regex =
      this.#parts.length === 1
        ? undefined
        : new RegExp(
            `^${this.#parts.map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`,
            "s",
          );
  }

  /** Whether the glob has no `*`, i.e. is an exact value. */
  get exact(): boolean {
    return this.#regex === undefined;
  }

  matches(value: string): boolean {
    return this.#regex ? this.#regex.test(value) : value === this.source;
  }

  /** The Cedar `like` pattern: literal runs and wildcards, with nothing left to escape. */
  cedarPattern(): PatternElem[] {
    return this.#parts.flatMap((part, index) => {
      const elements: PatternElem[] = index > 0 ? ["Wildcard"] : [];
      if (part !== "") elements.push({ Literal: part });
      return elements;
    });
  }
}
