import type { RequestParamHandler } from "express";
import type { z } from "zod";
import { InvalidRequestError, NotFoundError } from "../errors.ts";

/**
 * Parses input with a schema; a failure becomes `invalid_request` naming each bad field.
 * `part` names the input where an issue is about all of it (`(query): ...`).
 */
export function validate<S extends z.ZodType>(
  schema: S,
  input: unknown,
  part: "body" | "query" = "body",
): z.infer<S> {
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const issues = result.error.issues.map((issue) => ({
    path: issue.path.join("."),
    message: issue.code === "unrecognized_keys" ? unknownFields(schema, issue) : issue.message,
  }));
  const summary = issues.map((issue) => `${issue.path || `(${part})`}: ${issue.message}`).join("; ");
  throw new InvalidRequestError(summary, { issues });
}

/**
 * Says a request held fields its schema does not take without repeating their names: a
 * field name is the client's text, and a secret pasted in the wrong place (say a JSON body
 * sent as a form, whose one "field" is the whole body) must not come back in the error.
 * It lists the fields that are taken instead, which is what the client needs to fix it.
 */
function unknownFields(schema: z.ZodType, issue: z.core.$ZodIssueUnrecognizedKeys): string {
  const count = issue.keys.length;
  const taken = fieldsAt(schema, issue.path);
  const what = count === 1 ? "a field it does not take" : `${count} fields it does not take`;
  return taken ? `holds ${what}; it takes ${taken.join(", ")}` : `holds ${what}`;
}

/** The field names of the object schema at `path`, through wrappers and arrays; else undefined. */
function fieldsAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] | undefined {
  let def = schema._zod.def as z.core.$ZodTypeDef & Record<string, unknown>;
  let step = 0;
  for (;;) {
    const inner = (def.innerType ?? (def.type === "pipe" ? def.in : undefined)) as z.ZodType | undefined;
    if (inner) def = inner._zod.def as typeof def;
    else if (step === path.length)
      return def.type === "object" ? Object.keys(def.shape as Record<string, unknown>) : undefined;
    else if (def.type === "object" && typeof path[step] === "string") {
      const field = (def.shape as Record<string, z.ZodType>)[path[step++] as string];
      if (!field) return undefined;
      def = field._zod.def as typeof def;
    } else if (def.type === "array" && typeof path[step] === "number") {
      step += 1;
      def = (def.element as z.ZodType)._zod.def as typeof def;
    } else return undefined;
  }
}

/**
 * Checks a route's `:id` before anything else runs: an id the broker could not have made
 * names nothing, so it is `not_found` without a Redis key, lock or audit event named after it.
 */
export function idParam(schema: z.ZodType<string>, what: string): RequestParamHandler {
  return (_req, _res, next, value) => {
    next(schema.safeParse(value).success ? undefined : new NotFoundError(what));
  };
}
