import type { Cluster, Redis } from "ioredis";
import { type JWTVerifyGetKey, SignJWT } from "jose";
import type { SigningKey } from "../../adapters/jwt/signing-keys.ts";
import type { Clock } from "../clock.ts";
import type { RedisLocks } from "../locks.ts";
import type { RedisKeys, ShardKeys } from "../redis.ts";
import { CHECKPOINT_TYPE, type Checkpoint, chainLink, GENESIS, verifyShardChain } from "./audit-chain.ts";
import { publicEventId } from "./audit-log.ts";

/** Events read per page while sealing or verifying. */
const PAGE = 1000;

/**
 * Stores a checkpoint and the chain's new head together. One script rather than a MULTI: on a
 * Redis Cluster whose master stopped answering, ioredis could retry a MULTI without end.
 */
const STORE_CHECKPOINT_SCRIPT = `
redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', 'c', ARGV[2])
redis.call('HSET', KEYS[2], 'lastId', ARGV[3], 'hash', ARGV[4], 'count', ARGV[5], 'firstId', ARGV[6])
return 1
`;

type SealingClient = (Redis | Cluster) & {
  jitkeyStoreCheckpoint(
    checkpoints: string,
    seal: string,
    minId: string,
    jws: string,
    lastId: string,
    hash: string,
    count: string,
    firstId: string,
  ): Promise<number>;
};

/** The outcome of verifying the whole trail; `brokenAt` is a public event id. */
export type VerifyReport =
  | { ok: true; events: number; checkpoints: number; unsealed: number }
  | { ok: false; brokenAt: string; reason: string; events: number };

/**
 * Makes the audit trail tamper-evident, off the request path: writes stay one append, and a
 * sealing job (one at a time per shard) extends each shard's hash chain in stream order and
 * stores a checkpoint signed with the broker's key, as transparency logs do. Editing,
 * inserting or deleting a sealed event breaks the chain at the next checkpoint, and nobody
 * without the broker's private key can sign a checkpoint that hides it.
 */
export class AuditSealer {
  constructor(
    private readonly deps: {
      redis: Redis | Cluster;
      keys: RedisKeys;
      issuer: string;
      signingKey: SigningKey;
      verifyKey: JWTVerifyGetKey;
      locks: Pick<RedisLocks, "withLock">;
      clock: Clock;
      retentionMs: number;
    },
  ) {
    if (!("jitkeyStoreCheckpoint" in deps.redis))
      deps.redis.defineCommand("jitkeyStoreCheckpoint", { numberOfKeys: 2, lua: STORE_CHECKPOINT_SCRIPT });
  }

  /** Seals what is new in every shard; returns how many events it sealed. */
  async sealAll(): Promise<number> {
    const sealed = await Promise.all(this.deps.keys.shards.map((shard) => this.seal(shard)));
    return sealed.reduce((sum, n) => sum + n, 0);
  }

  /** Extends one shard's chain over its new events and stores a signed checkpoint. */
  async seal(shard: ShardKeys): Promise<number> {
    return this.deps.locks.withLock(`audit-seal:${shard.index}`, async () => {
      const { redis } = this.deps;
      const state = await redis.hgetall(shard.auditSeal);
      let last = state.lastId ?? "0-0";
      let hash = state.hash ?? GENESIS;
      let count = Number(state.count ?? 0);
      let firstId = state.firstId;
      const prev = hash;
      let sealed = 0;
      for (;;) {
        const entries = await redis.xrange(shard.audit, `(${last}`, "+", "COUNT", PAGE);
        firstId ??= entries[0]?.[0];
        for (const [streamId, fields] of entries) {
          hash = chainLink(hash, streamId, fields[1] ?? "");
          last = streamId;
        }
        sealed += entries.length;
        if (entries.length < PAGE) break;
      }
      if (sealed === 0) return 0;
      count += sealed;
      const checkpoint: Checkpoint = { shard: shard.index, lastId: last, hash, count, prev };
      const jws = await new SignJWT({ ...checkpoint })
        .setProtectedHeader({
          alg: this.deps.signingKey.alg,
          kid: this.deps.signingKey.kid,
          typ: CHECKPOINT_TYPE,
        })
        .setIssuer(this.deps.issuer)
        .setIssuedAt(Math.floor(this.deps.clock.now() / 1000))
        .sign(this.deps.signingKey.privateKey);
      const minId = String(Math.max(0, Date.now() - this.deps.retentionMs));
      await (redis as SealingClient).jitkeyStoreCheckpoint(
        shard.auditCheckpoints,
        shard.auditSeal,
        minId,
        jws,
        last,
        hash,
        String(count),
        firstId ?? last,
      );
      return sealed;
    });
  }

  /**
   * Recomputes every shard's chain from its stored events and checks it against the signed
   * checkpoints. Verification of a shard starts at its oldest checkpoint still within
   * retention (events before it are leaving the trail); events after the newest checkpoint
   * are not sealed yet and are counted as `unsealed`.
   */
  async verify(): Promise<VerifyReport> {
    let events = 0;
    let checkpoints = 0;
    let unsealed = 0;
    for (const shard of this.deps.keys.shards) {
      const report = await this.verifyShard(shard);
      if (!report.ok) return { ...report, events: events + report.events };
      events += report.events;
      checkpoints += report.checkpoints;
      unsealed += report.unsealed;
    }
    return { ok: true, events, checkpoints, unsealed };
  }

  /** Every event of a shard, oldest first, read a page at a time. */
  async *events(shard: ShardKeys): AsyncGenerator<readonly [string, string]> {
    let after = "-";
    for (;;) {
      const entries = await this.deps.redis.xrange(shard.audit, after, "+", "COUNT", PAGE);
      for (const [streamId, fields] of entries) yield [streamId, fields[1] ?? ""] as const;
      if (entries.length < PAGE) return;
      after = `(${(entries.at(-1) as [string, string[]])[0]}`;
    }
  }

  /** A shard's signed checkpoints, oldest first. */
  async checkpoints(shard: ShardKeys): Promise<string[]> {
    return (await this.deps.redis.xrange(shard.auditCheckpoints, "-", "+")).map(
      ([, fields]) => fields[1] ?? "",
    );
  }

  private async verifyShard(shard: ShardKeys): Promise<VerifyReport> {
    const verdict = await verifyShardChain({
      checkpoints: await this.checkpoints(shard),
      events: this.events(shard),
      firstSealedId: (await this.deps.redis.hget(shard.auditSeal, "firstId")) ?? undefined,
      issuer: this.deps.issuer,
      verifyKey: this.deps.verifyKey,
    });
    return verdict.ok ? verdict : { ...verdict, brokenAt: publicEventId(verdict.brokenAt, shard.index) };
  }
}
