import { writeSync } from "node:fs";
import winston from "winston";
import Transport from "winston-transport";

/** Field names whose values are never logged, at any depth. */
const SECRET_FIELD =
  /(token|secret|password|passwd|credential|authorization|cookie|private|apikey|api_key|^key$|^d$|wrap)/i;

/** Values that look like secrets even under an innocent field name: JWTs and bearer headers. */
const SECRET_VALUE = /(eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|Bearer\s+\S+)/g;

/** Returns a copy of `value` with secret fields replaced by "[redacted]". */
export function redact(value: unknown, depth = 0): unknown {
  if (depth > 8) return "[truncated]";
  if (typeof value === "string") return value.replace(SECRET_VALUE, "[redacted]");
  if (Array.isArray(value)) return value.map((item) => redact(item, depth + 1));
  if (value && typeof value === "object") {
    if (value instanceof Error) return { name: value.name, message: redact(value.message, depth + 1) };
    const out: Record<string, unknown> = {};
    for (const [field, inner] of Object.entries(value)) {
      // Hashes of tokens are configuration, not secrets; keep them readable.
      out[field] =
        SECRET_FIELD.test(field) && !/sha256|hash|accessor$/i.test(field)
          ? "[redacted]"
          : redact(inner, depth + 1);
    }
    return out;
  }
  return value;
}

const redactFormat = winston.format((info) => {
  const cleaned = redact({ ...info }) as winston.Logform.TransformableInfo;
  for (const symbol of Object.getOwnPropertySymbols(info)) {
    (cleaned as unknown as Record<symbol, unknown>)[symbol] = (info as unknown as Record<symbol, unknown>)[
      symbol
    ];
  }
  return cleaned;
});

const MESSAGE = Symbol.for("message");

/**
 * Standard output, written once per turn of the event loop: a busy broker logs a line per
 * request, and a write per line is a system call and a wake-up of whatever reads the pipe.
 * Lines from every logger share one buffer, so they stay in order. What is pending when the
 * process exits — `process.exit`, a fatal error — is written synchronously first; only a
 * SIGKILL can lose the lines of the current turn.
 */
const stdout = {
  pending: [] as string[],
  scheduled: false,
  hooked: false,
  take(): string {
    this.scheduled = false;
    const text = this.pending.join("");
    this.pending = [];
    return text;
  },
  add(line: string): void {
    this.pending.push(line);
    if (!this.hooked) {
      this.hooked = true;
      process.once("exit", () => {
        const text = this.take();
        if (text) writeSync(1, text);
      });
    }
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      const text = this.take();
      if (text) process.stdout.write(text);
    });
  },
};

class StdoutLines extends Transport {
  override log(info: Record<string | symbol, unknown>, callback: () => void): void {
    stdout.add(`${info[MESSAGE] as string}\n`);
    callback();
  }
}

/**
 * The broker's JSON logger, to standard output unless `transports` are given. Every line passes through redaction, so a secret handed to it
 * by mistake is masked rather than written.
 */
export function createLogger(options: { level?: string; transports?: Transport[] } = {}): winston.Logger {
  return winston.createLogger({
    level: options.level ?? "info",
    format: winston.format.combine(redactFormat(), winston.format.timestamp(), winston.format.json()),
    defaultMeta: { service: "jitkey" },
    transports: options.transports ?? [new StdoutLines()],
  });
}
