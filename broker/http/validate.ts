import type { z } from "zod";
import { InvalidRequestError } from "../errors.ts";

/** Parses input with a schema; a failure becomes `invalid_request` naming each bad field. */
export function validate<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const issues = result.error.issues.map((issue) => ({ path: issue.path.join("."), message: issue.message }));
  const summary = issues.map((issue) => `${issue.path || "(body)"}: ${issue.message}`).join("; ");
  throw new InvalidRequestError(summary, { issues });
}
