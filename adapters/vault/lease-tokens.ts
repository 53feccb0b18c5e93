import type { IssueRequest } from "../types.ts";
import { isAlreadyGone, VaultRequestError } from "./vault-errors.ts";
import type { VaultSession } from "./vault-session.ts";

/**
 * Token `meta` keys naming the jitkey lease a Vault token belongs to. Vault keeps token meta
 * verbatim (the display name is sanitised: `_` becomes `-`), shows it on every lookup and
 * passes it to audit devices, so meta is what the crash path searches by.
 */
export const META = {
  leaseId: "jitkey_lease_id",
  taskId: "jitkey_task_id",
  agentId: "jitkey_agent_id",
  resource: "jitkey_resource",
} as const;

/** The meta every per-lease token carries. */
export function leaseTokenMeta(request: IssueRequest): Record<string, string> {
  return {
    [META.leaseId]: request.leaseId,
    [META.taskId]: request.taskId,
    [META.agentId]: request.agentId,
    [META.resource]: request.resource,
  };
}

/** What a token lookup by accessor tells about a jitkey token; never the token itself. */
export interface JitkeyToken {
  readonly accessor: string;
  readonly meta: Readonly<Record<string, string>>;
  /** When Vault created the token. */
  readonly createdAt: Date;
}

interface LookupData {
  accessor?: string;
  meta?: Record<string, string> | null;
  creation_time?: number;
}

/**
 * Lists every token accessor (`LIST auth/token/accessors`, needs `sudo`) and looks each up
 * (`auth/token/lookup-accessor`), keeping the tokens whose meta names this resource and passes
 * `filter`. Costs one request per token in the namespace, so only the crash path, renewal of
 * dynamic leases and the orphan sweep use it; a namespace dedicated to jitkey keeps it small.
 */
export async function findJitkeyTokens(
  session: VaultSession,
  resource: string,
  concurrency: number,
  filter: (token: JitkeyToken) => boolean,
): Promise<JitkeyToken[]> {
  let accessors: string[];
  try {
    const listed = await session.request<{ data?: { keys?: string[] } }>("token accessor list", (vault) =>
      vault.list("auth/token/accessors"),
    );
    accessors = listed.data?.keys ?? [];
  } catch (error) {
    // An empty list answers 404 in Vault.
    if (error instanceof VaultRequestError && error.status === 404) return [];
    throw error;
  }
  const found: JitkeyToken[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < accessors.length) {
      const accessor = accessors[next++];
      if (!accessor) continue;
      let data: LookupData | undefined;
      try {
        const response = await session.request<{ data?: LookupData }>("token lookup", (vault) =>
          vault.write("auth/token/lookup-accessor", { accessor }),
        );
        data = response.data;
      } catch (error) {
        // The token expired between the list and the lookup: nothing to find there.
        if (isAlreadyGone(error)) continue;
        throw error;
      }
      const meta = data?.meta;
      if (!meta || meta[META.resource] !== resource || !meta[META.leaseId]) continue;
      const token: JitkeyToken = {
        accessor,
        meta,
        createdAt: new Date((data?.creation_time ?? 0) * 1000),
      };
      if (filter(token)) found.push(token);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, accessors.length) }, worker));
  return found;
}

/** Revokes a token and everything it created by accessor; an unknown accessor is success. */
export async function revokeAccessor(session: VaultSession, accessor: string): Promise<void> {
  try {
    await session.request("token revocation", (vault) =>
      vault.write("auth/token/revoke-accessor", { accessor }),
    );
  } catch (error) {
    if (isAlreadyGone(error)) return;
    throw error;
  }
}
