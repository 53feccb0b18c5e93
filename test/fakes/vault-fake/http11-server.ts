/**
 * A deliberately small HTTP/1.1 server on `node:net`, used only by the Vault fake.
 *
 * Why not `node:http`: Vault's API uses the `LIST` verb (node-vault's `list()` sends it), and
 * Node's HTTP parser (llhttp) rejects any method outside its fixed table with a 400 before
 * user code runs. Rewriting the first bytes of a socket is not enough either, because clients
 * keep connections alive and send many requests on one socket. So this server parses each
 * request itself: request line, headers, then a body framed by `Content-Length` or
 * `Transfer-Encoding: chunked`, looping for keep-alive. It answers with `Content-Length`
 * framing only. That is all the Vault fake needs; it is not a general-purpose server.
 */
import { createServer, type Server, type Socket } from "node:net";

/** One parsed request. Header names are lower-case. */
export interface RawRequest {
  readonly method: string;
  /** The request target as sent, e.g. `/v1/sys/health?standbyok=true`. */
  readonly target: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
}

/** What a handler answers; `body` is serialised as JSON when it is not a string. */
export interface RawResponse {
  readonly status: number;
  readonly body?: unknown;
  readonly headers?: Readonly<Record<string, string>>;
}

export type RawHandler = (request: RawRequest) => Promise<RawResponse>;

const STATUS_TEXT: Record<number, string> = {
  200: "OK",
  202: "Accepted",
  204: "No Content",
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  429: "Too Many Requests",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
};

const MAX_HEAD_BYTES = 64 * 1024;
const MAX_BODY_BYTES = 4 * 1024 * 1024;

class ProtocolError extends Error {}

/** Parses requests out of a growing buffer; returns undefined while a request is incomplete. */
function parseRequest(buffer: Buffer): { request: RawRequest; consumed: number } | undefined {
  const headEnd = buffer.indexOf("\r\n\r\n");
  if (headEnd < 0) {
    if (buffer.length > MAX_HEAD_BYTES) throw new ProtocolError("request head too large");
    return undefined;
  }
  const lines = buffer.subarray(0, headEnd).toString("latin1").split("\r\n");
  const [method, target, version] = (lines[0] ?? "").split(" ");
  if (!method || !target || !version?.startsWith("HTTP/1.")) throw new ProtocolError("bad request line");
  if (!/^[A-Z]+$/.test(method)) throw new ProtocolError("bad method");
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0) throw new ProtocolError("bad header line");
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const bodyStart = headEnd + 4;
  if (headers["transfer-encoding"]?.toLowerCase() === "chunked") {
    const chunks: Buffer[] = [];
    let offset = bodyStart;
    for (;;) {
      const sizeEnd = buffer.indexOf("\r\n", offset);
      if (sizeEnd < 0) return undefined;
      const size = Number.parseInt(
        buffer.subarray(offset, sizeEnd).toString("latin1").split(";")[0] ?? "",
        16,
      );
      if (!Number.isFinite(size) || size < 0) throw new ProtocolError("bad chunk size");
      if (size === 0) {
        // Trailers are not used by any client of this fake; expect the final CRLF directly.
        if (buffer.length < sizeEnd + 4) return undefined;
        return {
          request: { method, target, headers, body: Buffer.concat(chunks) },
          consumed: sizeEnd + 4,
        };
      }
      if (buffer.length < sizeEnd + 2 + size + 2) return undefined;
      chunks.push(buffer.subarray(sizeEnd + 2, sizeEnd + 2 + size));
      offset = sizeEnd + 2 + size + 2;
      if (offset - bodyStart > MAX_BODY_BYTES) throw new ProtocolError("body too large");
    }
  }
  const length = Number(headers["content-length"] ?? "0");
  if (!Number.isInteger(length) || length < 0 || length > MAX_BODY_BYTES) {
    throw new ProtocolError("bad content-length");
  }
  if (buffer.length < bodyStart + length) return undefined;
  return {
    request: { method, target, headers, body: Buffer.from(buffer.subarray(bodyStart, bodyStart + length)) },
    consumed: bodyStart + length,
  };
}

function serialise(response: RawResponse, keepAlive: boolean): Buffer {
  const hasBody = response.body !== undefined && response.status !== 204;
  const payload = hasBody
    ? Buffer.from(typeof response.body === "string" ? response.body : JSON.stringify(response.body))
    : Buffer.alloc(0);
  const head = [
    `HTTP/1.1 ${response.status} ${STATUS_TEXT[response.status] ?? "Status"}`,
    `Content-Length: ${payload.length}`,
    `Connection: ${keepAlive ? "keep-alive" : "close"}`,
    ...(hasBody ? ["Content-Type: application/json"] : []),
    ...Object.entries(response.headers ?? {}).map(([name, value]) => `${name}: ${value}`),
  ];
  return Buffer.concat([Buffer.from(`${head.join("\r\n")}\r\n\r\n`, "latin1"), payload]);
}

/**
 * Starts the server on 127.0.0.1 and an ephemeral port. Requests on one connection are
 * answered in order, one at a time (no pipelining races).
 */
export async function startHttp11Server(handler: RawHandler): Promise<{ server: Server; port: number }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    let buffer = Buffer.alloc(0);
    let busy = false;
    const pump = async (): Promise<void> => {
      if (busy) return;
      busy = true;
      try {
        for (;;) {
          let parsed: ReturnType<typeof parseRequest>;
          try {
            parsed = parseRequest(buffer);
          } catch {
            socket.end(serialise({ status: 400, body: { errors: ["malformed HTTP request"] } }, false));
            return;
          }
          if (!parsed) return;
          buffer = buffer.subarray(parsed.consumed);
          const keepAlive = parsed.request.headers.connection?.toLowerCase() !== "close";
          let response: RawResponse;
          try {
            response = await handler(parsed.request);
          } catch (error) {
            response = {
              status: 500,
              body: { errors: [`fake internal error: ${(error as Error).message}`] },
            };
          }
          if (socket.destroyed) return;
          socket.write(serialise(response, keepAlive));
          if (!keepAlive) {
            socket.end();
            return;
          }
        }
      } finally {
        busy = false;
      }
    };
    socket.on("data", (data: Buffer) => {
      buffer = Buffer.concat([buffer, data]);
      void pump().then(() => {
        // Data may have arrived while the handler ran; parse it now.
        if (buffer.length > 0 && !socket.destroyed) void pump();
      });
    });
  });
  // Closing must not wait for idle keep-alive connections.
  const originalClose = server.close.bind(server);
  server.close = ((callback?: (error?: Error) => void) => {
    for (const socket of sockets) socket.destroy();
    return originalClose(callback);
  }) as Server["close"];
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("fake server has no TCP address");
  return { server, port: address.port };
}
