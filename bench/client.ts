import type { LoadResult, LoadSpec } from "./load.ts";
import type { BenchProcess, BenchRun } from "./processes.ts";

/** An answer from a broker: status and parsed JSON body (undefined when not JSON). */
export interface Answer<T = Record<string, unknown>> {
  status: number;
  body: T;
}

/** One HTTP call to a broker under test; never throws on a non-2xx status. */
export async function call<T = Record<string, unknown>>(
  url: string,
  init: { method?: string; token?: string; json?: unknown; form?: Record<string, string> } = {},
): Promise<Answer<T>> {
  const headers: Record<string, string> = {};
  if (init.token) headers.authorization = `Bearer ${init.token}`;
  let body: string | undefined;
  if (init.json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(init.json);
  } else if (init.form) {
    headers["content-type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(init.form).toString();
  }
  const res = await fetch(url, { method: init.method ?? (body ? "POST" : "GET"), headers, body });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, body: parsed as T };
}

/** Like {@link call}, but a status other than `expected` is an error of the benchmark. */
export async function expectCall<T = Record<string, unknown>>(
  expected: number,
  url: string,
  init: Parameters<typeof call>[1] = {},
): Promise<T> {
  const answer = await call<T>(url, init);
  if (answer.status !== expected)
    throw new Error(`${init.method ?? "request"} ${url}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body;
}

/** Runs `fn` over `items` with at most `concurrency` calls in flight; results in input order. */
export async function pool<T, R>(
  items: T[],
  concurrency: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const index = next++;
        results[index] = await fn(items[index] as T, index);
      }
    }),
  );
  return results;
}

/** The p-th percentile (0–100) of `values`, nearest rank; NaN for none. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[rank - 1] as number;
}

/**
 * The fastest of repeated timings: other work on a shared machine only ever adds time, so
 * the minimum is the best estimate of what the code itself costs.
 */
export function fastest(values: number[]): number {
  return values.length === 0 ? Number.NaN : Math.min(...values);
}

/** Drives `bench/load.ts` in its own process: one autocannon job at a time. */
export class LoadGenerator {
  #nextId = 0;
  readonly #pending = new Map<number, { resolve: (r: LoadResult) => void; reject: (e: Error) => void }>();

  private constructor(readonly proc: BenchProcess) {
    proc.child.on("message", (message: { id: number; result?: LoadResult; error?: string }) => {
      const waiter = this.#pending.get(message.id);
      this.#pending.delete(message.id);
      if (message.result) waiter?.resolve(message.result);
      else waiter?.reject(new Error(`load generator: ${message.error}`));
    });
    void proc.exited.then((code) => {
      for (const waiter of this.#pending.values())
        waiter.reject(new Error(`load generator exited with ${code}`));
      this.#pending.clear();
    });
  }

  static start(run: BenchRun): LoadGenerator {
    return new LoadGenerator(
      run.spawn("load", process.execPath, ["--import", "tsx", "bench/load.ts"], {}, { ipc: true }),
    );
  }

  run(spec: LoadSpec): Promise<LoadResult> {
    const id = ++this.#nextId;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.proc.child.send({ id, spec });
    });
  }

  stop(): void {
    if (this.proc.child.connected) this.proc.child.disconnect();
  }
}
