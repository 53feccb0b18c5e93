import type { Cluster, Redis } from "ioredis";
import type { RedisKeys, ShardKeys } from "../redis.ts";

/** A record with a status that moves only through atomic writes. */
export interface StatusRecord {
  readonly id: string;
  readonly status: string;
}

/** Reads JSON records of one kind (tasks or leases) from their shards. */
export class RecordStore<T extends StatusRecord> {
  constructor(
    private readonly redis: Redis | Cluster,
    private readonly keys: RedisKeys,
    private readonly keyIn: (shard: ShardKeys, id: string) => string,
  ) {}

  /** The record's key. */
  keyOf(id: string): string {
    return this.keyIn(this.keys.forId(id), id);
  }

  async get(id: string): Promise<T | undefined> {
    return parse<T>(await this.redis.get(this.keyOf(id)));
  }

  /** Records that exist among `ids`, in the order asked. One MGET per shard (Cluster slots). */
  async getMany(ids: readonly string[]): Promise<T[]> {
    if (ids.length === 0) return [];
    const byShard = new Map<ShardKeys, string[]>();
    for (const id of ids) {
      const shard = this.keys.forId(id);
      byShard.set(shard, [...(byShard.get(shard) ?? []), id]);
    }
    const found = new Map<string, T>();
    await Promise.all(
      [...byShard].map(async ([shard, shardIds]) => {
        const raws = await this.redis.mget(shardIds.map((id) => this.keyIn(shard, id)));
        raws.forEach((raw, i) => {
          const record = parse<T>(raw);
          if (record) found.set(shardIds[i] as string, record);
        });
      }),
    );
    return ids.flatMap((id) => {
      const record = found.get(id);
      return record ? [record] : [];
    });
  }
}

/** Parses a stored record; `undefined` for a missing key. */
export function parse<T>(raw: string | null | undefined): T | undefined {
  return raw ? (JSON.parse(raw) as T) : undefined;
}
