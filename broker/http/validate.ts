import type { RequestParamHandler } from "express";
import type { z } from "zod";
import { InvalidRequestError, NotFoundError } from "../errors.ts";

/** Parses input with a schema; a failure becomes `invalid_request` naming each bad field. */
export function validate<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const issues = result.error.issues.map((issue) => ({ path: issue.path.join("."), message: issue.message }));
  const summary = issues.map((issue) => `${issue.path || "(body)"}: ${issue.message}`).join("; ");
  throw new InvalidRequestError(summary, { issues });
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
