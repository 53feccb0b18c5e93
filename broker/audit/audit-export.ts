import { createLocalJWKSet, type JSONWebKeySet } from "jose";
import type { RedisKeys } from "../redis.ts";
import { type ShardVerdict, verifyShardChain } from "./audit-chain.ts";
import type { AuditSealer } from "./audit-seal.ts";

/** How the chain is computed, in words, for whoever verifies an export without jitkey. */
export const CHAIN_RULE =
  "per shard: link = SHA-256(previous link as 32 bytes || streamId || '\\n' || json); genesis = 32 zero bytes; checkpoints are JWTs (typ jitkey-audit-checkpoint+jwt) signed by a key in jwks, whose claims {shard, lastId, hash, count, prev} give the link at lastId";

/** One line of an export (JSON Lines). */
export type ExportLine =
  | {
      kind: "jitkey-audit-export";
      version: 1;
      issuer: string;
      exportedAt: string;
      jwks: JSONWebKeySet;
      chain: string;
    }
  | { kind: "shard"; shard: number; firstSealedId?: string }
  | { kind: "checkpoint"; shard: number; jws: string }
  | { kind: "event"; shard: number; streamId: string; json: string };

/**
 * The whole trail as JSON Lines: a header with the broker's public keys, then per shard its
 * signed checkpoints and its events exactly as stored — everything an outside tool needs to
 * recompute the chains and check the signatures.
 */
export async function* exportAudit(deps: {
  sealer: AuditSealer;
  keys: RedisKeys;
  issuer: string;
  jwks: JSONWebKeySet;
  firstSealedId(shard: number): Promise<string | undefined>;
  now: Date;
}): AsyncGenerator<ExportLine> {
  yield {
    kind: "jitkey-audit-export",
    version: 1,
    issuer: deps.issuer,
    exportedAt: deps.now.toISOString(),
    jwks: deps.jwks,
    chain: CHAIN_RULE,
  };
  for (const shard of deps.keys.shards) {
    const firstSealedId = await deps.firstSealedId(shard.index);
    yield { kind: "shard", shard: shard.index, ...(firstSealedId ? { firstSealedId } : {}) };
    for (const jws of await deps.sealer.checkpoints(shard))
      yield { kind: "checkpoint", shard: shard.index, jws };
    for await (const [streamId, json] of deps.sealer.events(shard))
      yield { kind: "event", shard: shard.index, streamId, json };
  }
}

/** Verifies an export with the keys in its own header (or `jwks`, when the caller fetched them itself). */
export async function verifyExport(
  lines: readonly ExportLine[],
  options: { jwks?: JSONWebKeySet } = {},
): Promise<
  | { ok: true; events: number; unsealed: number }
  | { ok: false; shard: number; brokenAt: string; reason: string }
> {
  const header = lines[0];
  if (header?.kind !== "jitkey-audit-export") throw new Error("not a jitkey audit export (no header line)");
  const verifyKey = createLocalJWKSet(options.jwks ?? header.jwks);
  const shards = new Map<
    number,
    { firstSealedId?: string; checkpoints: string[]; events: [string, string][] }
  >();
  for (const line of lines.slice(1)) {
    if (line.kind === "jitkey-audit-export") continue;
    const shard = shards.get(line.shard) ?? { checkpoints: [], events: [] };
    if (line.kind === "shard" && line.firstSealedId) shard.firstSealedId = line.firstSealedId;
    if (line.kind === "checkpoint") shard.checkpoints.push(line.jws);
    if (line.kind === "event") shard.events.push([line.streamId, line.json]);
    shards.set(line.shard, shard);
  }
  let events = 0;
  let unsealed = 0;
  for (const [index, shard] of shards) {
    const verdict: ShardVerdict = await verifyShardChain({
      checkpoints: shard.checkpoints,
      events: (async function* () {
        yield* shard.events;
      })(),
      ...(shard.firstSealedId ? { firstSealedId: shard.firstSealedId } : {}),
      issuer: header.issuer,
      verifyKey,
    });
    if (!verdict.ok) return { ok: false, shard: index, brokenAt: verdict.brokenAt, reason: verdict.reason };
    events += verdict.events;
    unsealed += verdict.unsealed;
  }
  return { ok: true, events, unsealed };
}
