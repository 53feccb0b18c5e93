import { hash, timingSafeEqual } from "node:crypto";
import type { IntrospectorPrincipal, OperatorPrincipal } from "../identity/principal.ts";

/** The sha256 of a bearer token, hex, as written in `tokenSha256`. */
export function sha256Hex(token: string): string {
  return hash("sha256", token, "hex");
}

/**
 * Operators and introspectors, recognised by the sha256 of their bearer token. Every
 * configured hash is compared, in constant time, whatever matches first.
 */
export class PrincipalTokens {
  readonly #entries: { principal: OperatorPrincipal | IntrospectorPrincipal; hash: Buffer }[];

  constructor(config: {
    operators: { name: string; tokenSha256: string }[];
    introspectors: { name: string; tokenSha256: string; resources?: string[] }[];
  }) {
    this.#entries = [
      ...config.operators.map((op) => ({
        principal: { kind: "operator", id: op.name } as const,
        hash: Buffer.from(op.tokenSha256, "hex"),
      })),
      ...config.introspectors.map((rs) => ({
        principal: {
          kind: "introspector",
          id: rs.name,
          ...(rs.resources ? { resources: rs.resources } : {}),
        } as const,
        hash: Buffer.from(rs.tokenSha256, "hex"),
      })),
    ];
  }

  /** The operator or introspector holding `token`, if any. */
  match(token: string): OperatorPrincipal | IntrospectorPrincipal | undefined {
    const presented = hash("sha256", token, "buffer");
    let found: OperatorPrincipal | IntrospectorPrincipal | undefined;
    for (const entry of this.#entries) {
      if (timingSafeEqual(presented, entry.hash) && !found) found = entry.principal;
    }
    return found;
  }
}
