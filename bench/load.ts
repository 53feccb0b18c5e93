/**
 * The load generator: a child process of `bench/run.ts` (started with `fork`, driven over
 * IPC) that runs autocannon, so that load never shares an event loop with the orchestrator
 * or the system under test. Each job cycles through a pre-built request list, so every
 * request carries its own agent token and task id (or credential).
 */
import autocannon from "autocannon";

/** One HTTP request of a load list. */
export interface LoadRequest {
  method: "GET" | "POST" | "DELETE";
  path: string;
  headers: Record<string, string>;
  body?: string;
}

/** One autocannon job: a warm-up (not reported) and then the measured run. */
export interface LoadSpec {
  url: string;
  connections: number;
  requests: LoadRequest[];
  /** Seconds of warm-up before the measured run; its answers are discarded. */
  warmupSeconds?: number;
  /** Length of the measured run in seconds (ignored when `amount` is set). */
  durationSeconds?: number;
  /** A fixed number of requests instead of a duration. */
  amount?: number;
  /** Requests per second from all connections together; unthrottled when absent. */
  overallRate?: number;
  /**
   * Runs of the same series add up: the result covers every measured run of the series so
   * far, latencies merged into one histogram. Lets the orchestrator interleave short windows
   * of two brokers and still report one figure each.
   */
  series?: string;
}

/** What the orchestrator gets back: one run, or every run of its series so far. */
export interface LoadResult {
  requests: number;
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  seconds: number;
  rps: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  max_ms: number;
  statusCodes: Record<string, number>;
  runs: number;
}

/** autocannon's own aggregation of raw results (merges latency histograms); not in its types. */
const aggregate = (
  autocannon as unknown as {
    aggregateResult(
      results: autocannon.Result[],
      options: { url: string; connections: number },
    ): autocannon.Result;
  }
).aggregateResult;

const series = new Map<string, autocannon.Result[]>();

function run(
  spec: LoadSpec,
  measured: { durationSeconds?: number; amount?: number },
): Promise<autocannon.Result> {
  let next = 0;
  const list = spec.requests;
  return new Promise((resolve, reject) => {
    autocannon(
      {
        url: spec.url,
        connections: spec.connections,
        ...(measured.amount ? { amount: measured.amount } : { duration: measured.durationSeconds ?? 10 }),
        ...(spec.overallRate ? { overallRate: spec.overallRate } : {}),
        timeout: 30,
        skipAggregateResult: true,
        requests: [
          {
            setupRequest: (request) => {
              const item = list[next++ % list.length] as LoadRequest;
              return {
                ...request,
                method: item.method,
                path: item.path,
                headers: item.headers,
                body: item.body,
              };
            },
          },
        ],
      },
      (error, result) => (error ? reject(error) : resolve(result)),
    );
  });
}

export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  if (spec.warmupSeconds) await run(spec, { durationSeconds: spec.warmupSeconds });
  const raw = await run(spec, spec);
  const runs = spec.series ? [...(series.get(spec.series) ?? []), raw] : [raw];
  if (spec.series) series.set(spec.series, runs);
  const merged = aggregate(runs, { url: spec.url, connections: spec.connections });
  const sum = (field: "2xx" | "non2xx" | "errors" | "timeouts" | "duration") =>
    runs.reduce((total, r) => total + r[field], 0);
  const ok = sum("2xx");
  const non2xx = sum("non2xx");
  const seconds = sum("duration");
  const statusCodes: Record<string, number> = {};
  for (const [code, stats] of Object.entries(merged.statusCodeStats ?? {}))
    statusCodes[code] = stats.count ?? 0;
  return {
    requests: ok + non2xx,
    ok,
    non2xx,
    errors: sum("errors"),
    timeouts: sum("timeouts"),
    seconds,
    rps: (ok + non2xx) / seconds,
    p50_ms: merged.latency.p50,
    p90_ms: merged.latency.p90,
    p99_ms: merged.latency.p99,
    max_ms: merged.latency.max,
    statusCodes,
    runs: runs.length,
  };
}

if (process.send) {
  process.on("message", (message: { id: number; spec: LoadSpec }) => {
    runLoad(message.spec).then(
      (result) => process.send?.({ id: message.id, result }),
      (error: unknown) => process.send?.({ id: message.id, error: String((error as Error).stack ?? error) }),
    );
  });
  process.on("disconnect", () => process.exit(0));
}
