import { createHash } from "node:crypto";
import { type JWTVerifyGetKey, jwtVerify } from "jose";

/** The chain's value before the first event of a shard. */
export const GENESIS = Buffer.alloc(32).toString("base64url");
/** The `typ` of a signed checkpoint (a JWT signed with the broker's key). */
export const CHECKPOINT_TYPE = "jitkey-audit-checkpoint+jwt";

/**
 * One link of the chain: SHA-256 over the previous link (32 bytes), the event's stream id, a
 * newline and the event exactly as stored. Anyone holding the stored events can recompute it.
 */
export function chainLink(previous: string, streamId: string, json: string): string {
  return createHash("sha256")
    .update(Buffer.from(previous, "base64url"))
    .update(`${streamId}\n${json}`)
    .digest("base64url");
}

/** What a signed checkpoint says: the chain of `shard` up to `lastId`. */
export interface Checkpoint {
  shard: number;
  /** Stream id of the last event the checkpoint covers. */
  lastId: string;
  /** The chain link at `lastId`. */
  hash: string;
  /** Events sealed in this shard so far (all checkpoints together). */
  count: number;
  /** The previous checkpoint's link, or the genesis value. */
  prev: string;
}

/** How one shard's chain checked out. */
export type ShardVerdict =
  | { ok: true; events: number; checkpoints: number; unsealed: number }
  | { ok: false; brokenAt: string; reason: string; events: number };

/** Compares stream ids (`<ms>-<seq>`) in stream order. */
export function compareStreamIds(a: string, b: string): number {
  const [am = 0, as = 0] = a.split("-").map(Number);
  const [bm = 0, bs = 0] = b.split("-").map(Number);
  return am - bm || as - bs;
}

/**
 * Checks one shard's stored events against its signed checkpoints, in one pass over the
 * events in stream order. Checking starts at the genesis when the shard's first event is
 * still stored, else at its oldest checkpoint within reach (events before it are leaving the
 * trail by retention); events after the newest checkpoint are counted as not yet sealed.
 * `brokenAt` is the stream id of the first event of the first segment that does not match.
 */
export async function verifyShardChain(input: {
  /** Signed checkpoints, oldest first. */
  checkpoints: readonly string[];
  /** Every stored event of the shard, oldest first: stream id and the stored JSON. */
  events: AsyncIterable<readonly [string, string]>;
  /** The shard's first event ever sealed, when known. */
  firstSealedId?: string;
  issuer: string;
  verifyKey: JWTVerifyGetKey;
}): Promise<ShardVerdict> {
  const points: Checkpoint[] = [];
  for (const jws of input.checkpoints) {
    try {
      const { payload } = await jwtVerify(jws, input.verifyKey, {
        issuer: input.issuer,
        typ: CHECKPOINT_TYPE,
        algorithms: ["ES256", "EdDSA"],
      });
      points.push(payload as unknown as Checkpoint);
    } catch {
      return {
        ok: false,
        brokenAt: points.at(-1)?.lastId ?? "0-0",
        reason: "a checkpoint's signature does not verify",
        events: 0,
      };
    }
  }
  const iterator = input.events[Symbol.asyncIterator]();
  let pending = await iterator.next();
  const oldest = pending.done ? undefined : pending.value[0];
  if (points[0]?.prev === GENESIS && oldest !== undefined && oldest === input.firstSealedId)
    points.unshift({ shard: points[0].shard, lastId: "0-0", hash: GENESIS, count: 0, prev: GENESIS });
  const anchor = points.findIndex(
    (point) => point.lastId === "0-0" || oldest === undefined || compareStreamIds(point.lastId, oldest) >= 0,
  );
  let unsealed = 0;
  let verified = 0;
  if (anchor < 0) {
    for (; !pending.done; pending = await iterator.next()) unsealed += 1;
    return { ok: true, events: 0, checkpoints: 0, unsealed };
  }
  let hash = (points[anchor] as Checkpoint).hash;
  let next = anchor + 1;
  let covered = 0;
  let segmentFirst: string | undefined;
  const broken = (reason: string, at: string): ShardVerdict => ({
    ok: false,
    brokenAt: at,
    reason,
    events: verified,
  });
  for (; !pending.done; pending = await iterator.next()) {
    const [streamId, json] = pending.value;
    if (compareStreamIds(streamId, (points[anchor] as Checkpoint).lastId) <= 0) continue;
    const point = points[next];
    if (!point) {
      unsealed += 1;
      continue;
    }
    if (compareStreamIds(streamId, point.lastId) > 0)
      return broken("a sealed event is missing", segmentFirst ?? streamId);
    hash = chainLink(hash, streamId, json);
    covered += 1;
    segmentFirst ??= streamId;
    if (streamId !== point.lastId) continue;
    const previous = points[next - 1] as Checkpoint;
    if (point.prev !== previous.hash) return broken("the checkpoints do not follow each other", segmentFirst);
    if (hash !== point.hash || covered !== point.count - previous.count)
      return broken("an event was changed, added or removed", segmentFirst);
    verified += covered;
    covered = 0;
    segmentFirst = undefined;
    next += 1;
  }
  const missing = points[next];
  if (missing) return broken("sealed events are missing", segmentFirst ?? missing.lastId);
  const signed = points.filter((point) => point.lastId !== "0-0").length;
  return { ok: true, events: verified, checkpoints: signed, unsealed };
}
