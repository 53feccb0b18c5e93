import { randomBytes } from "node:crypto";

/** Opaque, unguessable ids with a type prefix: `tsk_…`, `lse_…`, `rev_…`, `req_…`. */
export function newId(prefix: "tsk" | "lse" | "rev" | "req"): string {
  return `${prefix}_${randomBytes(prefix === "req" ? 9 : 16).toString("base64url")}`;
}

/** The only tenant until tenancy ships; every record and key carries it already. */
export const DEFAULT_TENANT = "default";
