import { randomBytes } from "node:crypto";

/** The base64url alphabet, in order: an id's shard is the position of its first random character. */
const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** Random bytes drawn a page at a time: one system call per 4 KiB instead of one per id. */
let pool = Buffer.alloc(0);
let poolAt = 0;
function randomFromPool(size: number): Buffer {
  if (poolAt + size > pool.length) {
    pool = randomBytes(4096);
    poolAt = 0;
  }
  const bytes = pool.subarray(poolAt, poolAt + size);
  poolAt += size;
  return bytes;
}

/** Shard counts an id can spread evenly over: divisors of 64. */
export const SHARD_COUNTS = [1, 2, 4, 8, 16, 32, 64] as const;

/**
 * Opaque, unguessable ids with a type prefix: `tsk_…`, `lse_…`, `rev_…`, `req_…`.
 * `sameShardAs` makes the new id land in the same storage shard as that id (a lease goes
 * where its task is), by copying its first random character: 122 random bits remain.
 */
export function newId(prefix: "tsk" | "lse" | "rev" | "req", options: { sameShardAs?: string } = {}): string {
  const random = randomFromPool(prefix === "req" ? 9 : 16).toString("base64url");
  const lead = options.sameShardAs?.charAt(options.sameShardAs.indexOf("_") + 1);
  return `${prefix}_${lead ? lead + random.slice(1) : random}`;
}

/**
 * The storage shard of a `tsk_`/`lse_` id: where its record, its indexes and its audit
 * events live (one Redis Cluster hash slot per shard). Ids of other shapes map by a hash.
 */
export function shardOfId(id: string, shards: number): number {
  if (shards === 1) return 0;
  const index = ALPHABET.indexOf(id.charAt(id.indexOf("_") + 1));
  if (index >= 0 && /^(tsk|lse)_/.test(id)) return index % shards;
  return shardOfText(id, shards);
}

/** A stable shard for any text (agent ids): FNV-1a. */
export function shardOfText(text: string, shards: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  return (hash >>> 0) % shards;
}

/** Well-formed task and lease ids: anything else is refused before it reaches Redis. */
export const TASK_ID = /^tsk_[A-Za-z0-9_-]{22}$/;
export const LEASE_ID = /^lse_[A-Za-z0-9_-]{22}$/;

/** The only tenant until tenancy ships; every record and key carries it already. */
export const DEFAULT_TENANT = "default";
