import { readFileSync } from "node:fs";
import { z } from "zod";

/** Where secret options may come from besides the config file itself. */
export interface SecretSources {
  /** Environment variables; `process.env` unless a test passes its own. */
  env: Record<string, string | undefined>;
  /** Reads a secret file; trailing newlines are dropped. */
  readFile(path: string): string;
}

const defaultSources: SecretSources = {
  env: process.env,
  readFile: (path) => readFileSync(path, "utf8"),
};

/**
 * A secret option: the value itself, `{ env: NAME }` or `{ file: PATH }`, so config files
 * can be committed without secrets. Resolved once, when the options are parsed; a missing
 * variable or unreadable file fails start-up naming the field (never the value).
 *
 * @example
 * ```yaml
 * token: { env: VAULT_TOKEN }
 * appRole: { roleId: jitkey, secretId: { file: /run/secrets/approle-secret-id } }
 * ```
 */
export function secretRef(sources: SecretSources = defaultSources) {
  return z
    .union([
      z.string().min(1),
      z
        .object({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "an environment variable name") })
        .strict(),
      z.object({ file: z.string().min(1) }).strict(),
    ])
    .transform((ref, ctx) => {
      if (typeof ref === "string") return ref;
      if ("env" in ref) {
        const value = sources.env[ref.env];
        if (!value) {
          ctx.addIssue({ code: "custom", message: `environment variable ${ref.env} is not set or empty` });
          return z.NEVER;
        }
        return value;
      }
      let text: string;
      try {
        text = sources.readFile(ref.file).replace(/[\r\n]+$/, "");
      } catch (error) {
        ctx.addIssue({
          code: "custom",
          message: `cannot read ${ref.file}: ${(error as NodeJS.ErrnoException).code ?? "error"}`,
        });
        return z.NEVER;
      }
      if (!text) {
        ctx.addIssue({ code: "custom", message: `${ref.file} is empty` });
        return z.NEVER;
      }
      return text;
    });
}

/** The secret option schema with the process's environment and files. */
export const SecretRef = secretRef();
