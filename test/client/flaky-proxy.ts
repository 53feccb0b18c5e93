import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { closeServer } from "../cli/cli-harness.ts";

/** What the proxy does instead of forwarding, for the next `times` matching requests. */
export interface Fault {
  method: string;
  /** Matches the request path (without the query). */
  path: RegExp;
  /** `unavailable`: a 503 the broker would send; `rate-limited`: a 429; `reset`: drop the connection unanswered. */
  kind: "unavailable" | "rate-limited" | "reset";
  times: number;
  retryAfter?: string;
}

/**
 * A reverse proxy in front of a real broker that injects failures the network and a
 * draining broker cause, and counts the requests that reached it: the client's retry rules
 * are checked against it. Requests without a fault are forwarded untouched.
 */
export class FlakyProxy {
  readonly hits: { method: string; path: string }[] = [];
  private faults: Fault[] = [];
  private server: Server | undefined;
  url = "";

  constructor(private readonly upstream: string) {}

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0] ?? "/";
      const method = req.method ?? "GET";
      this.hits.push({ method, path });
      const fault = this.faults.find((f) => f.times > 0 && f.method === method && f.path.test(path));
      if (fault) {
        fault.times -= 1;
        if (fault.kind === "reset") {
          req.socket.destroy();
          return;
        }
        const [status, code] = fault.kind === "unavailable" ? [503, "unavailable"] : [429, "rate_limited"];
        res
          .writeHead(status, { "Content-Type": "application/json", "Retry-After": fault.retryAfter ?? "0" })
          .end(JSON.stringify({ error: { code, message: "injected by the test proxy" } }));
        return;
      }
      void this.forward(req, method).then(
        ({ status, headers, body }) => res.writeHead(status, headers).end(body),
        () => req.socket.destroy(),
      );
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Injects `fault`; earlier faults stay until used up. */
  inject(fault: Fault): void {
    this.faults.push(fault);
  }

  /** Forgets faults and counted requests. */
  reset(): void {
    this.faults = [];
    this.hits.length = 0;
  }

  /** Requests that reached the proxy with this method and a path matching `path`. */
  count(method: string, path: RegExp): number {
    return this.hits.filter((hit) => hit.method === method && path.test(hit.path)).length;
  }

  async stop(): Promise<void> {
    if (this.server) await closeServer(this.server);
  }

  private async forward(
    req: IncomingMessage,
    method: string,
  ): Promise<{ status: number; headers: Record<string, string>; body: Buffer }> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const headers: Record<string, string> = {};
    for (const name of ["authorization", "content-type", "accept"]) {
      const value = req.headers[name];
      if (typeof value === "string") headers[name] = value;
    }
    const answer = await fetch(this.upstream + (req.url ?? "/"), {
      method,
      headers,
      body: chunks.length ? Buffer.concat(chunks) : undefined,
    });
    const out: Record<string, string> = {};
    for (const name of ["content-type", "retry-after", "x-request-id"]) {
      const value = answer.headers.get(name);
      if (value) out[name] = value;
    }
    return { status: answer.status, headers: out, body: Buffer.from(await answer.arrayBuffer()) };
  }
}
