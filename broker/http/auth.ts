import type { Request } from "express";
import type { Broker } from "../broker.ts";
import { ForbiddenError, UnauthenticatedError } from "../errors.ts";
import { IdentityRejectedError, looksLikeJwt } from "../identity/agent-verifier.ts";
import type { AgentPrincipal, OperatorPrincipal, Principal } from "../identity/principal.ts";
import { RateLimiter } from "./rate-limiter.ts";

type Kind = Principal["kind"];
type PrincipalOf<K extends Kind> = Extract<Principal, { kind: K }>;

/**
 * Authenticates each request: operators and introspectors by token hash, agents by
 * identity JWT verified every time. Routes name the principal kinds they accept; any other
 * authenticated principal gets `forbidden`.
 */
export class Authenticator {
  readonly #cache = new WeakMap<Request, Promise<Principal>>();
  readonly #limiter: RateLimiter;

  constructor(private readonly broker: Broker) {
    this.#limiter = new RateLimiter(broker.redis, broker.keys, broker.clock);
  }

  /** The principal behind the request, if it is one of `kinds`. */
  async require<K extends Kind>(req: Request, ...kinds: K[]): Promise<PrincipalOf<K>> {
    let pending = this.#cache.get(req);
    if (!pending) {
      pending = this.authenticate(req);
      this.#cache.set(req, pending);
    }
    const principal = await pending;
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

  private async authenticate(req: Request): Promise<Principal> {
    const header = req.get("authorization") ?? "";
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match?.[1]) throw new UnauthenticatedError("missing bearer token");
    const token = match[1];
    const { config } = this.broker;
    const failureBucket = `auth-fail:${req.ip ?? "unknown"}`;
    try {
      if (!looksLikeJwt(token)) {
        // Opaque tokens can be guessed: an address past its failure limit gets no answer at all,
        // right or wrong, so guessing stops.
        await this.#limiter.check(failureBucket, config.limits.failedAuthPerMinute);
        const known = this.broker.principals.match(token);
        if (known) return known;
        throw new IdentityRejectedError("unknown bearer token");
      }
      // A signed identity token cannot be guessed: one that verifies is never locked out by
      // other clients' failures behind the same address.
      const agent = await this.broker.verifier.verify(token);
      await this.#limiter.hit(`agent:${agent.id}`, config.limits.agentRequestsPerMinute);
      return agent;
    } catch (error) {
      if (error instanceof IdentityRejectedError) {
        this.broker.metrics.identityRejected.inc();
        await this.broker.audit.record({
          type: "identity_rejected",
          actor: `ip:${req.ip ?? "unknown"}`,
          decision: "deny",
          reason: error.reason,
          issuer: error.issuer,
          route: `${req.method} ${req.originalUrl.split("?")[0]}`,
        });
        await this.#limiter.hit(failureBucket, config.limits.failedAuthPerMinute);
      }
      throw error;
    }
  }
}
