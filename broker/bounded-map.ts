/**
 * Sets `key` in a map used as a bounded cache: when the map already holds `limit` entries and
 * `key` is new, the oldest entry (first inserted) goes first.
 */
export function setBounded<K, V>(map: Map<K, V>, key: K, value: V, limit: number): void {
  if (map.size >= limit && !map.has(key)) {
    const oldest = map.keys().next();
    if (!oldest.done) map.delete(oldest.value);
  }
  map.set(key, value);
}
