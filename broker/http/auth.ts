import type { Request } from "express";
import type { Broker } from "../broker.ts";
import { ForbiddenError, RateLimitedError, UnauthenticatedError } from "../errors.ts";
import { digestOf, IdentityRejectedError, looksLikeJwt } from "../identity/agent-verifier.ts";
import type { AgentPrincipal, OperatorPrincipal, Principal } from "../identity/principal.ts";
import { type Caller, callerOf, FailedAuthLimit } from "./failed-auth.ts";
import { SlidingWindowLimiter } from "./rate-limiter.ts";

type Kind = Principal["kind"];
type PrincipalOf<K extends Kind> = Extract<Principal, { kind: K }>;

/**
 * Authenticates each request: operators and introspectors by token hash, agents by
 * identity JWT verified every time. Routes name the principal kinds they accept; any other
 * authenticated principal gets `forbidden`.
 */
export class Authenticator {
  readonly #cache = new WeakMap<Request, Promise<Principal>>();
  readonly #limiter: SlidingWindowLimiter;
  readonly #failures: FailedAuthLimit;

  constructor(
    private readonly broker: Pick<
      Broker,
      "config" | "redis" | "keys" | "clock" | "audit" | "metrics" | "principals" | "verifier"
    >,
  ) {
    this.#limiter = new SlidingWindowLimiter(broker.redis, broker.keys, broker.clock);
    this.#failures = new FailedAuthLimit({
      limiter: this.#limiter,
      redis: broker.redis,
      keys: broker.keys,
      audit: broker.audit,
      metrics: broker.metrics,
      clock: broker.clock,
      perMinute: broker.config.limits.failedAuthPerMinute,
    });
  }

  /** The principal behind the request, if it is one of `kinds`. */
  async require<K extends Kind>(req: Request, ...kinds: K[]): Promise<PrincipalOf<K>> {
    let pending = this.#cache.get(req);
    if (!pending) {
      pending = this.authenticate(callerOf(req));
      this.#cache.set(req, pending);
    }
    return this.ofKind(await pending, kinds);
  }

  /** The same for a request served outside Express (the hot routes). */
  async requireCaller<K extends Kind>(caller: Caller, ...kinds: K[]): Promise<PrincipalOf<K>> {
    return this.ofKind(await this.authenticate(caller), kinds);
  }

  private ofKind<K extends Kind>(principal: Principal, kinds: K[]): PrincipalOf<K> {
    if (!(kinds as Kind[]).includes(principal.kind)) {
      throw new ForbiddenError(`this route is for ${kinds.join(" or ")} principals, not ${principal.kind}s`);
    }
    return principal as PrincipalOf<K>;
  }

  agent(req: Request): Promise<AgentPrincipal> {
    return this.require(req, "agent");
  }

  operator(req: Request): Promise<OperatorPrincipal> {
    return this.require(req, "operator");
  }

  /**
   * The agent behind an RFC 7523 client assertion (`POST /v1/token`): its identity JWT, checked
   * exactly as a bearer token is — failed-auth limit, audit and per-agent rate limit included.
   */
  async agentAssertion(req: Request, assertion: string): Promise<AgentPrincipal> {
    const principal = await this.verify(callerOf(req), assertion, { agentsOnly: true });
    return principal as AgentPrincipal;
  }

  private async authenticate(caller: Caller): Promise<Principal> {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(caller.authorization ?? "");
    if (!match?.[1]) throw new UnauthenticatedError("missing bearer token");
    return this.verify(caller, match[1]);
  }

  private async verify(
    caller: Caller,
    token: string,
    options: { agentsOnly?: boolean } = {},
  ): Promise<Principal> {
    let principal: Principal;
    try {
      if (options.agentsOnly && !looksLikeJwt(token)) throw new IdentityRejectedError("malformed token");
      principal = looksLikeJwt(token) ? await this.broker.verifier.verify(token) : this.opaque(token);
    } catch (error) {
      // The address's standing decides only what a failure costs (audited, or only counted),
      // never whether a credential that matches gets in: a success never reads it.
      if (error instanceof IdentityRejectedError)
        return this.#failures.reject(caller, await this.#failures.standing(caller), error);
      throw error;
    }
    if (principal.kind === "agent") {
      const { limits } = this.broker.config;
      const usage = await this.#limiter.hit(`agent:${digestOf(principal.id)}`, limits.agentRequestsPerMinute);
      if (usage.exceeded) throw new RateLimitedError(usage.retryAfterSeconds);
    }
    return principal;
  }

  /** Operator and introspector tokens: high-entropy secrets matched by hash in constant time. */
  private opaque(token: string): Principal {
    const known = this.broker.principals.match(token);
    if (!known) throw new IdentityRejectedError("unknown bearer token");
    return known;
  }
}
