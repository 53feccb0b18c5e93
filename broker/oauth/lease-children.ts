import type { Cluster, Redis } from "ioredis";
import { type RedisKeys, type ShardKeys, sendEach } from "../redis.ts";

/**
 * Reads the children index (`lease-children:<id>`, written with each delegated lease): the
 * leases delegated directly from any of `leaseIds`. One pipeline per shard.
 */
export function leaseChildrenReader(
  redis: Redis | Cluster,
  keys: RedisKeys,
): (leaseIds: readonly string[]) => Promise<string[]> {
  return async (leaseIds) => {
    const byShard = new Map<ShardKeys, string[]>();
    for (const id of leaseIds) {
      const shard = keys.forId(id);
      byShard.set(shard, [...(byShard.get(shard) ?? []), id]);
    }
    const lists = await Promise.all(
      [...byShard].map(async ([shard, ids]) => {
        const replies = await sendEach(redis, ids, (target, id) =>
          (target as Redis).zrange(shard.leaseChildren(id), 0, -1),
        );
        return replies.flatMap(([error, children]) => {
          if (error) throw error;
          return children as string[];
        });
      }),
    );
    return lists.flat();
  };
}
