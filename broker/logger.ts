import winston from "winston";
import type Transport from "winston-transport";

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

/**
 * The broker's JSON logger. Every line passes through redaction, so a secret handed to it
 * by mistake is masked rather than written.
 */
export function createLogger(options: { level?: string; transports?: Transport[] } = {}): winston.Logger {
  return winston.createLogger({
    level: options.level ?? "info",
    format: winston.format.combine(redactFormat(), winston.format.timestamp(), winston.format.json()),
    defaultMeta: { service: "jitkey" },
    transports: options.transports ?? [new winston.transports.Console()],
  });
}
