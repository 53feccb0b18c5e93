import type { ChainableCommander, Cluster, Redis } from "ioredis";
import { type ShardKeys, sendEach } from "../redis.ts";

/**
 * Lua: appends an audit event to its shard's stream and its id to each index list (given
 * as numbers into `KEYS`), trimming by retention: the stream by `MINID`; a list expires whole once unused,
 * and ids past retention point at trimmed events, so every 16th append drops those at the
 * head, up to 8 per append since the last look (a list shorter than 16 expires whole instead).
 */
const LUA_APPEND_EVENT = `
local function appendEvent(stream, json, indexes, minId, indexTtl)
  local id = redis.call('XADD', KEYS[stream], 'MINID', '~', minId, '*', 'e', json)
  for _, number in ipairs(indexes) do
    local index = KEYS[number]
    local length = redis.call('RPUSH', index, id)
    redis.call('EXPIRE', index, indexTtl)
    if length % 16 == 0 then
      for _ = 1, 128 do
        local head = redis.call('LINDEX', index, 0)
        if not head or tonumber(string.match(head, '^(%d+)')) >= tonumber(minId) then break end
        redis.call('LPOP', index)
      end
    end
  end
  return id
end
`;

/**
 * Lua: the tail both scripts share. `applyEach(items, apply, changesChannel, liveChannel)`
 * calls `apply(item, i)` on each item, one reply each; an apply adds the keys of records it
 * patched to `changed` and the events waiting clients hear of to `live`. Processes that
 * cache record state drop those keys, and waiting clients hear of those events: one message
 * each per call, a line per record or event — also when an item fails midway, since what the
 * items before it (and it, up to the failure) changed stays changed.
 */
const LUA_APPLY_EACH = `
local changed, live = {}, {}
local function applyEach(items, apply, changesChannel, liveChannel)
  local function publish()
    if #changed > 0 and changesChannel ~= '' then redis.call('PUBLISH', changesChannel, table.concat(changed, '\\n')) end
    if #live > 0 then redis.call('PUBLISH', liveChannel, table.concat(live, '\\n')) end
  end
  local replies = {}
  for i, item in ipairs(items) do
    local ok, reply = pcall(apply, item, i)
    if not ok then
      publish()
      return redis.error_reply(type(reply) == 'table' and reply.err or tostring(reply))
    end
    replies[i] = reply
  end
  publish()
  return replies
end
`;

/**
 * Atomic changes to one shard: each write has guards on records, a new record or a patch of
 * the guarded one, index updates, a fan-out of a task's leases, and the audit events that go
 * with it, all applied by one Lua script, so a crash can never leave a state change without
 * its indexes or its audit event. Every key must belong to the writes' shard (one Redis
 * Cluster slot). A call carries one write or many (`ARGV[1]` is a JSON array of them): each
 * is applied, or refused by its own guards, on its own; one reply per write. The keys of
 * patched records are published once per call (`ARGV[2]`, newline-separated), and so are the
 * events waiting clients hear of (`ARGV[5]`, a line each). Events travel as arguments of their
 * own (from `ARGV[7]`), not escaped inside the writes' JSON.
 */
const ATOMIC_WRITE_SCRIPT = `${LUA_APPEND_EVENT}${LUA_APPLY_EACH}
local minId, indexTtl, liveChannel, shard = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local allowed = {ZADD=1, ZREM=1, ZREMRANGEBYSCORE=1, HSET=1, HDEL=1, EXPIRE=1, PERSIST=1, DEL=1}

local function apply(spec)
  local record, raw
  for i, guard in ipairs(spec.g or {}) do
    local current = redis.call('GET', KEYS[guard.k])
    if not current then return {0, false, i} end
    local decoded = cjson.decode(current)
    local ok = false
    for _, status in ipairs(guard.s) do
      if decoded.status == status then ok = true end
    end
    if ok and guard.eq then
      for field, value in pairs(guard.eq) do
        local actual = decoded[field]
        if actual == cjson.null then actual = nil end
        if value == cjson.null then value = nil end
        if actual ~= value then ok = false end
      end
    end
    if ok and guard.gt then
      for field, value in pairs(guard.gt) do
        if type(decoded[field]) ~= 'string' or decoded[field] <= value then ok = false end
      end
    end
    if not ok then return {0, current, i} end
    if i == 1 then record, raw = decoded, current end
  end
  if spec.c then
    if not redis.call('SET', KEYS[spec.c.k], spec.c.v, 'NX') then return {-1, false, 0} end
  end
  if spec.p then
    for field, value in pairs(spec.p.f) do record[field] = value end
    for _, field in ipairs(spec.p.u or {}) do record[field] = nil end
    raw = cjson.encode(record)
    local key = KEYS[spec.g[1].k]
    if spec.p.t and spec.p.t > 0 then redis.call('SET', key, raw, 'EX', spec.p.t)
    elseif spec.p.t == -1 then redis.call('SET', key, raw)
    else redis.call('SET', key, raw, 'KEEPTTL') end
    changed[#changed + 1] = key
  end
  for _, op in ipairs(spec.o or {}) do
    if not allowed[op[1]] then error('atomic write: op ' .. tostring(op[1])) end
    redis.call(op[1], KEYS[op[2]], unpack(op, 3))
  end
  local moved = {}
  if spec.m then
    -- A thousand members a call: a task with 10,000 live leases holds Redis for a few calls, not 40,000.
    local members = redis.call('ZRANGE', KEYS[spec.m.src], 0, -1)
    local taken = {}
    for _, from in ipairs(spec.m.from) do
      for first = 1, #members, 1000 do
        local chunk = {}
        for i = first, math.min(first + 999, #members) do
          if not taken[members[i]] then chunk[#chunk + 1] = members[i] end
        end
        if #chunk > 0 then
          local scores = redis.call('ZMSCORE', KEYS[from], unpack(chunk))
          local found, scored = {}, {}
          for i, member in ipairs(chunk) do
            if scores[i] then
              taken[member] = true
              found[#found + 1] = member
              scored[#scored + 1] = spec.m.score
              scored[#scored + 1] = member
            end
          end
          if #found > 0 then
            redis.call('ZREM', KEYS[from], unpack(found))
            redis.call('ZADD', KEYS[spec.m.to], unpack(scored))
          end
        end
      end
    end
    for _, member in ipairs(members) do
      if taken[member] then moved[#moved + 1] = member end
    end
  end
  local ids = {}
  for i, event in ipairs(spec.e or {}) do
    local json = ARGV[event.a]
    if event.n then
      local body = cjson.decode(json)
      body[event.n] = #moved
      json = cjson.encode(body)
    end
    local id = appendEvent(spec.x, json, event.i or {}, minId, indexTtl)
    ids[i] = id
    if event.p then live[#live + 1] = shard .. ' ' .. id .. ' ' .. json end
  end
  if spec.q then raw = false end
  return {1, raw or false, 0, ids, moved}
end

return applyEach(cjson.decode(ARGV[1]), apply, ARGV[2], liveChannel)
`;

/**
 * Many guarded patches of one fixed shape in one call, for a hot path where the general
 * script's per-write description would cost more than the write (settling thousands of
 * expired leases at once). Each patch: the record at a key must hold a status; then fields
 * are set, its expiry set, a member removed from sorted sets, and one audit event appended.
 * Applied or refused each on its own, one reply each: the event's stream id, or false.
 * `KEYS[1]` is the shard's audit stream; `ARGV[1..5]` as the general script's changes
 * channel, minimum id, index TTL, live channel and shard; `ARGV[6]` a JSON array of the
 * patches, each [key number, status, expiry seconds, member, set key numbers, event index key
 * numbers, published (1 or 0), fields]; each patch's event JSON from `ARGV[7]`, in order.
 */
const PATCH_BATCH_SCRIPT = `${LUA_APPEND_EVENT}${LUA_APPLY_EACH}
local minId, indexTtl, shard = ARGV[2], ARGV[3], ARGV[5]
local function apply(patch, i)
  local json = ARGV[6 + i]
  local key = KEYS[patch[1]]
  local raw = redis.call('GET', key)
  if not raw then return false end
  local record = cjson.decode(raw)
  if record.status ~= patch[2] then return false end
  for field, value in pairs(patch[8]) do record[field] = value end
  redis.call('SET', key, cjson.encode(record), 'EX', patch[3])
  changed[#changed + 1] = key
  for _, set in ipairs(patch[5]) do redis.call('ZREM', KEYS[set], patch[4]) end
  local id = appendEvent(1, json, patch[6], minId, indexTtl)
  if patch[7] == 1 then live[#live + 1] = shard .. ' ' .. id .. ' ' .. json end
  return id
end
return applyEach(cjson.decode(ARGV[6]), apply, ARGV[1], ARGV[4])
`;

/**
 * One patch of a batch (see {@link AtomicWriter.runPatches}): the record at `key` must hold
 * `status`; `fields` are set on it, its expiry becomes `expirySeconds`, `member` leaves the
 * sorted sets `removeFrom`, and `event` is appended. Every key in the patch's shard.
 */
export interface BatchPatch {
  readonly shard: ShardKeys;
  readonly key: string;
  readonly status: string;
  readonly fields: Readonly<Record<string, string>>;
  readonly expirySeconds: number;
  readonly member: string;
  readonly removeFrom: readonly string[];
  readonly event: PreparedEvent;
}

type Op = [
  op: "ZADD" | "ZREM" | "ZREMRANGEBYSCORE" | "HSET" | "HDEL" | "EXPIRE" | "PERSIST" | "DEL",
  key: number,
  ...args: string[],
];

interface Guard {
  k: number;
  s: readonly string[];
  eq?: Record<string, unknown>;
  gt?: Record<string, string>;
}

/** How the guarded record's expiry changes with a patch. */
export type RecordExpiry = { seconds: number } | "persist" | "keep";

/** What a write's guard checks on a record: its status and, optionally, field values. */
export interface GuardCondition {
  /** Fields that must hold exactly these values; `null` means absent. */
  equals?: Record<string, unknown>;
  /** ISO-8601 time fields that must be later than the given time (e.g. a task's `expiresAt`). */
  laterThan?: Record<string, string>;
}

/** An audit event ready to be written with a change; built by the audit log. */
export interface PreparedEvent {
  /** The event without its id, as stored. */
  readonly json: string;
  /** Index lists (in the write's shard) that get the event's id. */
  readonly indexKeys: readonly string[];
  /** Sent on the live events channel too (waiting clients, operator streams). */
  readonly publish: boolean;
}

/** A patch of the guarded record: fields set, fields removed, and its expiry (see `patch`). */
interface PatchSpec {
  f: Record<string, unknown>;
  u?: string[];
  t?: number;
}

/** An audit event of a write: its JSON, its index keys' numbers, published, moved-count field. */
interface EventEntry {
  j: string;
  i: number[];
  p?: 1;
  n?: string;
}

/** Builds one atomic write. Keys are checked to belong to the shard. */
export class AtomicWrite {
  readonly keys: string[] = [];
  readonly #guards: Guard[] = [];
  #create: { k: number; v: string } | undefined;
  #patch: PatchSpec | undefined;
  readonly #ops: Op[] = [];
  #move: { src: number; from: number[]; to: number; score: string } | undefined;
  readonly #events: EventEntry[] = [];
  /** The audit stream's key number, once the write has an event. */
  #stream: number | undefined;
  #quiet = false;

  constructor(readonly shard: ShardKeys) {}

  /** The caller will not read the record once the write is applied: the script sends none back. */
  quiet(): this {
    this.#quiet = true;
    return this;
  }

  /**
   * Proceeds only if the record at `key` exists with one of `statuses` and meets `condition`.
   * The first guard's record is the one `patch` changes.
   */
  guard(key: string, statuses: readonly string[], condition: GuardCondition = {}): this {
    const guard: Guard = { k: this.key(key), s: statuses };
    if (condition.equals && Object.keys(condition.equals).length > 0) guard.eq = condition.equals;
    if (condition.laterThan) guard.gt = condition.laterThan;
    this.#guards.push(guard);
    return this;
  }

  /** Creates a record; the whole write fails (nothing applied) when the key exists. */
  create(key: string, record: object): this {
    this.#create = { k: this.key(key), v: JSON.stringify(record) };
    return this;
  }

  /** Sets fields on the first guarded record (and removes `unset` ones). */
  patch(fields: Record<string, unknown>, options: { unset?: string[]; expiry?: RecordExpiry } = {}): this {
    if (this.#guards.length === 0) throw new Error("patch needs a guard");
    const patch: PatchSpec = { f: dropUndefined(fields) };
    if (options.unset?.length) patch.u = options.unset;
    const expiry = options.expiry ?? "keep";
    if (expiry === "persist") patch.t = -1;
    else if (expiry !== "keep") patch.t = Math.max(1, Math.ceil(expiry.seconds));
    this.#patch = patch;
    return this;
  }

  zadd(key: string, score: number, member: string): this {
    this.#ops.push(["ZADD", this.key(key), String(score), member]);
    return this;
  }

  zrem(key: string, member: string): this {
    this.#ops.push(["ZREM", this.key(key), member]);
    return this;
  }

  /** Drops members scored at or below `maxScore` (index entries past retention). */
  trimBelow(key: string, maxScore: number): this {
    this.#ops.push(["ZREMRANGEBYSCORE", this.key(key), "-inf", String(maxScore)]);
    return this;
  }

  hset(key: string, field: string, value: string): this {
    this.#ops.push(["HSET", this.key(key), field, value]);
    return this;
  }

  hdel(key: string, field: string): this {
    this.#ops.push(["HDEL", this.key(key), field]);
    return this;
  }

  expire(key: string, seconds: number): this {
    this.#ops.push(["EXPIRE", this.key(key), String(Math.max(1, Math.ceil(seconds)))]);
    return this;
  }

  persist(key: string): this {
    this.#ops.push(["PERSIST", this.key(key)]);
    return this;
  }

  /**
   * Moves every member of the `source` set that is in one of `from` into `to` with `score`
   * (a task's live leases into the revoking index, say). The moved members come back in the
   * result.
   */
  moveMembers(source: string, from: readonly string[], to: string, score: number): this {
    this.#move = {
      src: this.key(source),
      from: from.map((key) => this.key(key)),
      to: this.key(to),
      score: String(score),
    };
    return this;
  }

  /**
   * Appends an audit event. `movedCountField` names a field set to the number of members
   * `moveMembers` moved.
   */
  event(event: PreparedEvent, options: { movedCountField?: string } = {}): this {
    const entry: EventEntry = {
      j: event.json,
      i: event.indexKeys.map((key) => this.key(key)),
    };
    this.#stream ??= this.key(this.shard.audit);
    if (event.publish) entry.p = 1;
    if (options.movedCountField) entry.n = options.movedCountField;
    this.#events.push(entry);
    return this;
  }

  get hasEvents(): boolean {
    return this.#events.length > 0;
  }

  /** The stored JSON of the write's `n`th event. */
  eventJson(n: number): string | undefined {
    return this.#events[n]?.j;
  }

  /**
   * How the script reads this write, its key numbers (1-based, into this write's `keys`)
   * turned into the call's by `number`, and each event's JSON passed as the call's argument
   * that `argument` returns the number of.
   */
  spec(number: (local: number) => number, argument: (value: string) => number): WriteSpec {
    const move = this.#move;
    return {
      g:
        this.#guards.length > 0 ? this.#guards.map((guard) => ({ ...guard, k: number(guard.k) })) : undefined,
      c: this.#create ? { k: number(this.#create.k), v: this.#create.v } : undefined,
      p: this.#patch,
      o: this.#ops.length > 0 ? this.#ops.map(([op, key, ...args]) => [op, number(key), ...args]) : undefined,
      m: move
        ? { src: number(move.src), from: move.from.map(number), to: number(move.to), score: move.score }
        : undefined,
      e:
        this.#events.length > 0
          ? this.#events.map(({ j, i, p, n }) => ({ a: argument(j), i: i.map(number), p, n }))
          : undefined,
      x: this.#stream !== undefined ? number(this.#stream) : undefined,
      q: this.#quiet ? 1 : undefined,
    };
  }

  private key(key: string): number {
    inShard(this.shard, key);
    const at = this.keys.indexOf(key);
    if (at >= 0) return at + 1;
    return this.keys.push(key);
  }
}

/** What an atomic write did. */
export interface AtomicResult {
  /** Whether it was applied. */
  readonly ok: boolean;
  /** When not applied because `create` found the key taken. */
  readonly exists: boolean;
  /** When a guard failed: its position (0-based). */
  readonly failedGuard: number | undefined;
  /** The first guarded record after the change (none for a {@link AtomicWrite.quiet} write), or the failing guard's record as it stands. */
  readonly record: string | undefined;
  /** Stream ids of the events written, in order. */
  readonly eventIds: readonly string[];
  /** Members `moveMembers` moved. */
  readonly moved: readonly string[];
}

type ScriptReply = [number, string | null, number, string[]?, string[]?];
type Client = (Redis | Cluster) & {
  jitkeyAtomicWrite(...args: string[]): Promise<ScriptReply[]>;
  jitkeyPatchBatch(...args: string[]): Promise<(string | null)[]>;
};

/** One write as the script reads it (see {@link AtomicWrite.spec}). */
interface WriteSpec {
  g?: Guard[];
  c?: { k: number; v: string };
  p?: PatchSpec;
  o?: (string | number)[][];
  m?: { src: number; from: number[]; to: number; score: string };
  e?: { a: number; i: number[]; p?: 1; n?: string }[];
  x?: number;
  q?: 1;
}

/**
 * The most writes one script call carries. A revocation round settles hundreds of leases: a
 * call each would cost a command's overhead per lease on both ends; one call for all would
 * hold Redis for tens of milliseconds while other clients wait.
 */
export const WRITES_PER_CALL = 64;

/** Runs atomic writes: one script call for one write, or for up to {@link WRITES_PER_CALL} of one shard. */
export class AtomicWriter {
  constructor(
    private readonly redis: Redis | Cluster,
    private readonly audit: {
      retentionMs: number;
      /** Where events clients may wait for are published. */
      channel: string;
      /** Where the keys of patched records are published (see `events/record-changes.ts`). */
      changes?: string;
    },
  ) {
    // Registered once per client: ioredis then sends EVALSHA, and the body only on a miss.
    if (!("jitkeyAtomicWrite" in redis))
      redis.defineCommand("jitkeyAtomicWrite", { lua: ATOMIC_WRITE_SCRIPT });
    if (!("jitkeyPatchBatch" in redis)) redis.defineCommand("jitkeyPatchBatch", { lua: PATCH_BATCH_SCRIPT });
  }

  async run(write: AtomicWrite): Promise<AtomicResult> {
    const [reply] = await (this.redis as Client).jitkeyAtomicWrite(...this.args([write]));
    return toResult(reply as ScriptReply);
  }

  /**
   * Runs independent writes: each shard's in calls of up to {@link WRITES_PER_CALL}, the calls
   * pipelined. Each write is applied or refused by its own guards; one refused does not undo
   * the others. Results come back in order.
   */
  async runAll(writes: readonly AtomicWrite[]): Promise<AtomicResult[]> {
    if (writes.length === 0) return [];
    if (writes.length === 1) return [await this.run(writes[0] as AtomicWrite)];
    const replies = await this.inCalls(writes, (target, call) =>
      (target as Client).jitkeyAtomicWrite(...this.args(call)),
    );
    return replies.map((reply) => toResult(reply as ScriptReply));
  }

  /**
   * Applies guarded patches of one fixed shape (see {@link BatchPatch}), grouped and pipelined
   * as {@link runAll} does. Returns, for each, its event's stream id, or undefined when its
   * record was gone or held another status (nothing applied).
   */
  async runPatches(patches: readonly BatchPatch[]): Promise<(string | undefined)[]> {
    const replies = await this.inCalls(patches, (target, call) =>
      (target as Client).jitkeyPatchBatch(...this.patchArgs(call)),
    );
    return replies.map((reply) => (typeof reply === "string" ? reply : undefined));
  }

  /**
   * Sends `items` in script calls of one shard each (a script's keys must all be in one Redis
   * Cluster slot), up to {@link WRITES_PER_CALL} a call, the calls pipelined. Returns the
   * script's reply for each item, in order; a failed call throws.
   */
  private async inCalls<T extends { readonly shard: ShardKeys }>(
    items: readonly T[],
    send: (target: Redis | Cluster | ChainableCommander, call: T[]) => unknown,
  ): Promise<unknown[]> {
    const byShard = new Map<number, number[]>();
    items.forEach((item, at) => {
      const list = byShard.get(item.shard.index) ?? [];
      list.push(at);
      byShard.set(item.shard.index, list);
    });
    const results: unknown[] = new Array(items.length);
    await Promise.all(
      [...byShard.values()].map(async (positions) => {
        const calls: number[][] = [];
        for (let at = 0; at < positions.length; at += WRITES_PER_CALL)
          calls.push(positions.slice(at, at + WRITES_PER_CALL));
        const replies = await sendEach(this.redis, calls, (target, call) =>
          send(
            target,
            call.map((at) => items[at] as T),
          ),
        );
        calls.forEach((call, i) => {
          const [error, reply] = replies[i] ?? [new Error("no reply"), null];
          if (error) throw error;
          call.forEach((at, n) => {
            results[at] = (reply as unknown[])[n];
          });
        });
      }),
    );
    return results;
  }

  /** One batch call's arguments (see the script). */
  private patchArgs(patches: readonly BatchPatch[]): string[] {
    const shard = (patches[0] as BatchPatch).shard;
    const keys = new CallKeys();
    keys.number(shard.audit);
    const number = (key: string) => keys.number(inShard(shard, key));
    const events: string[] = [];
    const specs = patches.map((patch) => {
      events.push(patch.event.json);
      return [
        number(patch.key),
        patch.status,
        Math.max(1, Math.ceil(patch.expirySeconds)),
        patch.member,
        patch.removeFrom.map(number),
        patch.event.indexKeys.map(number),
        patch.event.publish ? 1 : 0,
        patch.fields,
      ];
    });
    return [...keys.args(), ...this.shared(shard), JSON.stringify(specs), ...events];
  }

  /** The arguments every call shares: where changes and live events go, and retention. */
  private shared(shard: ShardKeys): string[] {
    const { retentionMs, changes, channel } = this.audit;
    return [
      changes ?? "",
      // Stream ids are Redis server time: trimming is by wall-clock age, whatever clock the broker runs on.
      String(Math.max(0, Date.now() - retentionMs)),
      String(Math.ceil(retentionMs / 1000)),
      channel,
      String(shard.index),
    ];
  }

  /** One call's arguments: the writes' keys (each once), the writes, and what they share. */
  private args(writes: readonly AtomicWrite[]): string[] {
    const keys = new CallKeys();
    const events: string[] = [];
    // The fixed arguments come first (ARGV[1..6]): events from ARGV[7].
    const argument = (json: string) => events.push(json) + 6;
    const specs = writes.map((write) => {
      const local = write.keys.map((key) => keys.number(key));
      return write.spec((n) => local[n - 1] as number, argument);
    });
    return [
      ...keys.args(),
      JSON.stringify(specs),
      ...this.shared((writes[0] as AtomicWrite).shard),
      ...events,
    ];
  }
}

/** A script call's keys, each once, numbered from 1 as the script reads them from `KEYS`. */
class CallKeys {
  readonly #keys: string[] = [];
  readonly #numbers = new Map<string, number>();

  number(key: string): number {
    let at = this.#numbers.get(key);
    if (at === undefined) {
      at = this.#keys.push(key);
      this.#numbers.set(key, at);
    }
    return at;
  }

  /** The call's leading arguments: how many keys, then the keys. */
  args(): string[] {
    return [String(this.#keys.length), ...this.#keys];
  }
}

/** Returns `key` if it is in `shard`: a script's keys must all be in one Redis Cluster slot. */
function inShard(shard: ShardKeys, key: string): string {
  if (!key.startsWith(shard.tag))
    throw new Error(`key ${key} is not in shard ${shard.tag}: one script call, one slot`);
  return key;
}

function toResult(reply: ScriptReply): AtomicResult {
  const [code, record, guard, ids, moved] = reply;
  return {
    ok: code === 1,
    exists: code === -1,
    failedGuard: code === 0 ? guard - 1 : undefined,
    record: record ?? undefined,
    eventIds: ids ?? [],
    moved: moved ?? [],
  };
}

function dropUndefined(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [field, value] of Object.entries(fields)) if (value !== undefined) out[field] = value;
  return out;
}
