import type { Credential, MintedLease } from "../client/types.ts";
import { UsageError } from "./exit-codes.ts";

/**
 * The environment variable prefix of a resource: `JITKEY_` + the name upper-cased, every
 * character other than A–Z and 0–9 turned into `_` (`reports-api` → `JITKEY_REPORTS_API`).
 */
export function resourcePrefix(resource: string): string {
  return `JITKEY_${resource.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`;
}

/**
 * A credential field's part of the name: camelCase split into words, upper-cased, other
 * characters `_` (`token` → `TOKEN`, `accessKeyId` → `ACCESS_KEY_ID`, `expiresAt` → `EXPIRES_AT`).
 */
export function fieldName(field: string): string {
  return field
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .toUpperCase()
    .replace(/[^A-Z0-9]/g, "_");
}

/**
 * The variables one minted lease gives the command: every credential field as
 * `<prefix>_<FIELD>`; nested objects (vault's `data`) flattened by joining the path with `_`
 * (`data.username` → `JITKEY_DB_DATA_USERNAME`), array items by index; numbers and booleans
 * as text; null left out. `<prefix>_LEASE_ID` names the lease (not secret).
 */
export function credentialEnv(minted: MintedLease): Record<string, string> {
  const prefix = resourcePrefix(minted.lease.resource);
  const env: Record<string, string> = {};
  flatten(minted.credential, prefix, env);
  env[`${prefix}_LEASE_ID`] = minted.lease.id;
  return env;
}

function flatten(value: unknown, name: string, env: Record<string, string>): void {
  if (value === null || value === undefined) return;
  if (Array.isArray(value)) {
    value.forEach((item, index) => {
      flatten(item, `${name}_${index}`, env);
    });
    return;
  }
  if (typeof value === "object") {
    for (const [field, inner] of Object.entries(value as Credential))
      flatten(inner, `${name}_${fieldName(field)}`, env);
    return;
  }
  env[name] = String(value);
}

/** Refuses resources whose names map to one prefix (`a-b` and `a_b`): their variables would collide. */
export function assertDistinctPrefixes(resources: string[]): void {
  const seen = new Map<string, string>();
  for (const resource of resources) {
    const prefix = resourcePrefix(resource);
    const other = seen.get(prefix);
    if (other !== undefined)
      throw new UsageError(
        other === resource
          ? `--resource ${resource} is given twice`
          : `--resource ${other} and ${resource} would both use ${prefix}_*`,
      );
    seen.set(prefix, resource);
  }
}
