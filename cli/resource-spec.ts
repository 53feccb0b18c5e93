import { UsageError } from "./exit-codes.ts";

/** One `--resource R[:scope,scope]` argument. */
export interface ResourceSpec {
  resource: string;
  /** Empty when none were given. */
  scopes: string[];
}

/** Parses `reports-api:read,write` into its resource and scopes. */
export function parseResourceSpec(text: string): ResourceSpec {
  const colon = text.indexOf(":");
  const resource = (colon < 0 ? text : text.slice(0, colon)).trim();
  const scopes =
    colon < 0
      ? []
      : text
          .slice(colon + 1)
          .split(",")
          .map((scope) => scope.trim());
  if (!resource) throw new UsageError(`--resource ${JSON.stringify(text)} names no resource`);
  if (scopes.some((scope) => !scope))
    throw new UsageError(
      `--resource ${JSON.stringify(text)} has an empty scope; write ${resource}:read,write`,
    );
  return { resource, scopes };
}

/** Parses every `--resource`; the task jitkey creates needs scopes for each one. */
export function parseResourceSpecs(texts: string[], options: { scopesRequired: boolean }): ResourceSpec[] {
  if (texts.length === 0) throw new UsageError("give at least one --resource R:scope[,scope]");
  const specs = texts.map(parseResourceSpec);
  if (options.scopesRequired) {
    const bare = specs.find((spec) => spec.scopes.length === 0);
    if (bare)
      throw new UsageError(
        `--resource ${bare.resource} needs its scopes to create a task, e.g. ${bare.resource}:read`,
      );
  }
  return specs;
}
