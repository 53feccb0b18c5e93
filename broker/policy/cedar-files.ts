import { readdir, readFile, stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import type { DetailedError, Effect, PolicyJson } from "@cedar-policy/cedar-wasm/nodejs";
import { chainPath } from "./attribute-use.ts";
import { policySetTextToParts, policyToJson, validate } from "./cedar-wasm.ts";
import { PolicyLoadError } from "./policy-errors.ts";

/** One operator-written Cedar file, as read. */
export interface CedarFile {
  path: string;
  text: string;
}

/** One policy of a `.cedar` file. */
export interface CedarFilePolicy {
  /** Its `@id("...")` annotation, else `<file name>:<line>`. */
  id: string;
  text: string;
  json: PolicyJson;
  effect: Effect;
  path: string;
  line: number | undefined;
}

/**
 * Reads `.cedar` files: each path is a file, or a directory whose `*.cedar` files are read in
 * name order. Relative paths are taken from `baseDir` (the config file's directory).
 * Throws {@link PolicyLoadError} naming a path that cannot be read.
 */
export async function readCedarFiles(paths: readonly string[], baseDir: string): Promise<CedarFile[]> {
  const files: CedarFile[] = [];
  for (const configured of paths) {
    const path = resolve(baseDir, configured);
    try {
      if ((await stat(path)).isDirectory()) {
        const names = (await readdir(path)).filter((name) => name.endsWith(".cedar")).sort();
        for (const name of names)
          files.push({ path: join(path, name), text: await readFile(join(path, name), "utf8") });
      } else {
        files.push({ path, text: await readFile(path, "utf8") });
      }
    } catch (error) {
      throw new PolicyLoadError(
        `cannot read policy file ${path}: ${(error as NodeJS.ErrnoException).code ?? "error"}`,
      );
    }
  }
  return files;
}

/**
 * Parses and validates one file against the schema, strictly: a syntax error, a template,
 * a policy naming an unknown attribute or entity type, a `has` test of an attribute the
 * schema does not have, or a policy that can never hold is refused with the file and line.
 * `known` is {@link knownAttributes} of the schema.
 */
export function parseCedarFile(
  file: CedarFile,
  schema: string,
  known: ReadonlyMap<string, ReadonlySet<string>>,
): CedarFilePolicy[] {
  const answer = validate({
    schema,
    policies: { staticPolicies: file.text },
    validationSettings: { mode: "strict" },
  });
  if (answer.type === "failure") throw loadError(file, answer.errors);
  if (answer.validationErrors.length > 0)
    throw loadError(
      file,
      answer.validationErrors.map(({ error }) => error),
    );
  const parts = policySetTextToParts(file.text);
  if (parts.type === "failure") throw loadError(file, parts.errors);
  if (parts.policy_templates.length > 0) {
    throw new PolicyLoadError(`${file.path}: policy templates (?principal, ?resource) are not supported`);
  }
  let cursor = 0;
  const policies = parts.policies.map((text): CedarFilePolicy => {
    const json = policyToJson(text);
    if (json.type === "failure") throw loadError(file, json.errors);
    // Parts are slices of the file; find each after the previous one for its line.
    const offset = file.text.indexOf(text, cursor);
    if (offset >= 0) cursor = offset + text.length;
    const line = offset >= 0 ? lineAt(file.text, offset) : undefined;
    const id = json.json.annotations?.id ?? `${basename(file.path)}:${line ?? parts.policies.indexOf(text)}`;
    const unknown = unknownAttributeTest(json.json, known);
    if (unknown) {
      throw new PolicyLoadError(
        `${file.path}:${line ?? "?"}: policy ${id} tests \`${unknown}\`, which the schema does not have` +
          (unknown.startsWith("principal.claims has") ? " (declare the claim in policyClaims)" : ""),
      );
    }
    return { id, text, json: json.json, effect: json.json.effect, path: file.path, line };
  });
  // An impossible policy is a typo the validator let through as "always false".
  const impossible = answer.validationWarnings.filter(isImpossible);
  if (impossible.length > 0)
    throw loadError(
      file,
      impossible.map(({ error }) => error),
    );
  return policies;
}

function isImpossible(warning: { error: DetailedError }): boolean {
  return /policy is impossible/.test(warning.error.message);
}

/** The first `x has a` in the policy where `x` is a known path and `a` is not one of its attributes. */
function unknownAttributeTest(
  policy: PolicyJson,
  known: ReadonlyMap<string, ReadonlySet<string>>,
): string | undefined {
  const pending: unknown[] = [policy.conditions];
  while (pending.length > 0) {
    const node = pending.pop();
    if (Array.isArray(node)) pending.push(...node);
    else if (node && typeof node === "object") {
      const has = (node as { has?: { left: unknown; attr: string | string[] } }).has;
      if (has) {
        let path = chainPath(has.left);
        for (const attr of [has.attr].flat()) {
          const attributes = path === undefined ? undefined : known.get(path);
          if (attributes && !attributes.has(attr)) return `${path} has ${attr}`;
          path = path === undefined ? undefined : `${path}.${attr}`;
        }
      }
      pending.push(...Object.values(node));
    }
  }
  return undefined;
}

function loadError(file: CedarFile, errors: readonly DetailedError[]): PolicyLoadError {
  const lines = errors.map((error) => {
    const start = error.sourceLocations?.[0]?.start;
    const where = start === undefined ? file.path : `${file.path}:${positionAt(file.text, start)}`;
    // Cedar numbers policies policy0, policy1, ... per call: the file and line say more.
    const message = error.message.replace(/^for policy `[^`]*`, /, "");
    return `${where}: ${message}${error.help ? ` (${error.help})` : ""}`;
  });
  return new PolicyLoadError(lines.join("\n"));
}

/** `line:column` of a Cedar source offset (bytes of UTF-8). */
function positionAt(text: string, byteOffset: number): string {
  const before = Buffer.from(text, "utf8").subarray(0, byteOffset).toString("utf8");
  const lines = before.split("\n");
  return `${lines.length}:${(lines.at(-1)?.length ?? 0) + 1}`;
}

function lineAt(text: string, offset: number): number {
  return text.slice(0, offset).split("\n").length;
}
