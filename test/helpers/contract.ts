/** Every error code API.md lets the broker answer with (`internal` aside: a bug, never expected). */
export const CONTRACT_ERROR_CODES = [
  "invalid_request",
  "unauthenticated",
  "forbidden",
  "policy_denied",
  "not_found",
  "task_not_approved",
  "task_closed",
  "lease_revoked",
  "duplicate_approval",
  "lease_not_renewable",
  "rate_limited",
  "adapter_unavailable",
  "unavailable",
  "invalid_dpop_proof",
] as const;

/** The value of one Prometheus sample line, e.g. `name{a="b"} 3`; NaN when absent. */
export function metricSample(metricsText: string, series: string): number {
  const line = metricsText.split("\n").find((l) => l.startsWith(`${series} `));
  return Number(line?.slice(series.length + 1) ?? Number.NaN);
}
