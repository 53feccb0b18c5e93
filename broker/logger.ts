import pino from "pino";

/** Field names whose values are never logged, at any depth. */
const SECRET_FIELD =
  /(token|secret|password|passwd|credential|authorization|cookie|private|apikey|api_key|^key$|^d$|wrap)/i;

/** Values that look like secrets even under an innocent field name: JWTs and bearer headers. */
const SECRET_VALUE = /(eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|Bearer\s+\S+)/g;

/** Whether a field's value is never logged. Hashes of tokens are configuration, not secrets. */
export function isSecretField(field: string): boolean {
  let secret = secretFields.get(field);
  if (secret === undefined) {
    secret = SECRET_FIELD.test(field) && !/sha256|hash|accessor$/i.test(field);
    // Field names are the code's own, bar a few from outside (claims): a bounded memo is enough.
    if (secretFields.size < 4096) secretFields.set(field, secret);
  }
  return secret;
}
const secretFields = new Map<string, boolean>();

/** `text` with whatever looks like a secret in it (a JWT, a bearer header) replaced by "[redacted]". */
export function redactText(text: string): string {
  return text.replace(SECRET_VALUE, "[redacted]");
}

/** Returns a copy of `value` with secret fields replaced by "[redacted]". */
export function redact(value: unknown, depth = 0): unknown {
  if (depth > 8) return "[truncated]";
  if (typeof value === "string") return redactText(value);
  if (Array.isArray(value)) return value.map((item) => redact(item, depth + 1));
  if (value && typeof value === "object") {
    if (value instanceof Error) return { name: value.name, message: redact(value.message, depth + 1) };
    const out: Record<string, unknown> = {};
    for (const [field, inner] of Object.entries(value))
      out[field] = isSecretField(field) ? "[redacted]" : redact(inner, depth + 1);
    return out;
  }
  return value;
}

/** The levels the broker logs at (config `log.level`), most severe first. */
export type LogLevel = "error" | "warn" | "info" | "debug";

type Fields = Record<string, unknown>;

/** What the line of one answered HTTP request says. */
export interface RequestLine {
  requestId: string;
  method: string;
  path: string;
  status: number;
  /** From the request's arrival to its answer's last byte handed to the socket. */
  ms: number;
}

/** The broker's logger: a message and, optionally, fields, one JSON object per line. */
export interface Logger {
  error(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  info(message: string, fields?: Fields): void;
  debug(message: string, fields?: Fields): void;
  /**
   * The `info` line `request` with these fields, as `info` would write it. A broker answering
   * thousands of requests a second writes one per answer: its fields are known, so it is
   * formatted directly rather than field by field.
   */
  request(line: RequestLine): void;
  /**
   * The `info` line `message` whose one field `field` is `json`: JSON the caller serialized
   * from values already redacted (an audit event as stored), written as it is — what
   * `info(message, { [field]: JSON.parse(json) })` would write, without parsing it back.
   */
  infoWithJson(message: string, field: string, json: string): void;
  isLevelEnabled(level: LogLevel): boolean;
}

/** Where a logger's lines go: each call of `write` gets one line, newline included. */
export interface LogSink {
  write(line: string): unknown;
}

/**
 * Standard output, shared by every logger of the process so that their lines stay in order.
 * Lines are gathered for the rest of the event loop's turn and handed over together to an
 * asynchronous writer (sonic-boom) that writes at least 4 KiB at a time, or what it has every
 * 100 ms: a busy broker logs a line per request, and a system call per line would cost more
 * than the request. Handed over one by one they would cost too: the writer measures its whole
 * pending buffer on each write. What is pending when the process exits is written
 * synchronously first, so only a SIGKILL can lose the lines of the last 100 ms.
 */
let stdout: LineBatch | undefined;

/** Lines gathered until the end of the event loop's turn (or 16 KiB), then written as one. */
class LineBatch implements LogSink {
  #lines: string[] = [];
  #size = 0;

  constructor(readonly writer: pino.DestinationStream & { flushSync(): void }) {
    process.on("exit", () => {
      this.flush();
      writer.flushSync();
    });
  }

  write(line: string): void {
    if (this.#lines.length === 0) setImmediate(() => this.flush());
    this.#lines.push(line);
    this.#size += line.length;
    if (this.#size >= 16_384) this.flush();
  }

  flush(): void {
    if (this.#lines.length === 0) return;
    const text = this.#lines.join("");
    this.#lines = [];
    this.#size = 0;
    this.writer.write(text);
  }
}

/** The `service` field of every line. */
const SERVICE = "jitkey";

/** The `timestamp` field of a line; a busy broker logs many lines in the same millisecond. */
let stamped = { at: 0, field: "" };
function timestamp(): string {
  const now = Date.now();
  if (now !== stamped.at) stamped = { at: now, field: `,"timestamp":"${new Date(now).toISOString()}"` };
  return stamped.field;
}

/**
 * The broker's JSON logger (pino), to standard output unless a `sink` is given. Every message
 * and field passes through {@link redact} first, so a secret handed to it by mistake is masked
 * rather than written.
 */
export function createLogger(options: { level?: LogLevel; sink?: LogSink } = {}): Logger {
  stdout ??= options.sink
    ? undefined
    : new LineBatch(pino.destination({ dest: 1, sync: false, minLength: 4096, periodicFlush: 100 }));
  const destination = (options.sink ?? stdout) as LogSink;
  const lines = pino(
    {
      level: options.level ?? "info",
      messageKey: "message",
      base: { service: SERVICE },
      timestamp,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination as pino.DestinationStream,
  );
  /** An `info` line written directly, in pino's order: `fields` is JSON object members, `message` a JSON string. */
  const infoLine = (fields: string, message: string): void => {
    destination.write(
      `{"level":"info"${timestamp()},"service":"${SERVICE}",${fields},"message":${message}}\n`,
    );
  };
  const at =
    (level: LogLevel) =>
    (message: string, fields?: Fields): void => {
      if (!lines.isLevelEnabled(level)) return;
      lines[level](fields ? (redact(fields) as Fields) : {}, redact(message) as string);
    };
  return {
    error: at("error"),
    warn: at("warn"),
    info: at("info"),
    debug: at("debug"),
    request({ requestId, method, path, status, ms }) {
      if (!lines.isLevelEnabled("info")) return;
      // Field for field what `info("request", ...)` writes; only the path can hold what redact masks.
      infoLine(
        `"requestId":${JSON.stringify(requestId)},"method":${JSON.stringify(method)},"path":${JSON.stringify(redact(path))},"status":${status},"ms":${ms}`,
        '"request"',
      );
    },
    infoWithJson(message, field, json) {
      if (!lines.isLevelEnabled("info")) return;
      infoLine(`${JSON.stringify(field)}:${json}`, JSON.stringify(redact(message)));
    },
    isLevelEnabled: (level) => lines.isLevelEnabled(level),
  };
}
