/** Every figure of a run, under flat dotted keys (`"mint.rps"`), as printed on the last line. */
export type Figures = Record<string, number | string | boolean | number[] | string[] | null>;

/** One of the targets, judged on a run's figures. */
export interface Target {
  id: string;
  text: string;
  met: boolean;
}

const num = (figures: Figures, key: string): number => {
  const value = figures[key];
  return typeof value === "number" ? value : Number.NaN;
};

/** The targets. A figure that could not be taken (NaN) misses its target. */
export function judge(figures: Figures): Target[] {
  const f = (key: string) => num(figures, key);
  return [
    { id: "mint_rps", text: "mint ≥ 1.2× naive rps", met: f("ratio.mint") >= 1.2 },
    { id: "mint_p99", text: "mint p99 ≤ naive p99", met: f("mint.p99_ms") <= f("naive.mint.p99_ms") },
    { id: "introspect_rps", text: "introspect ≥ 3× naive rps", met: f("ratio.introspect") >= 3 },
    { id: "all_2xx", text: "every answer 2xx", met: f("answers.non2xx") === 0 },
    { id: "memory", text: "≤ 1,536 B per live lease", met: f("memory.bytes_per_lease") <= 1536 },
    { id: "storm_lag", text: "storm revoke lag p99 ≤ 1 s", met: f("storm.lag_p99_ms") <= 1000 },
    {
      id: "storm_mint_p99",
      text: "storm mint p99 ≤ 2× without",
      met: f("storm.mint_p99_ms") <= 2 * f("storm.baseline_mint_p99_ms"),
    },
    { id: "fanout_inactive", text: "fan-out inactive ≤ 100 ms", met: f("fanout.inactive_ms") <= 100 },
    { id: "fanout_revoked", text: "fan-out all revoked ≤ 5 s", met: f("fanout.revoked_ms") <= 5000 },
    { id: "reconcile_flat", text: "reconciler pass full ≤ 1.2× empty", met: f("ratio.reconcile") <= 1.2 },
    { id: "startup_flat", text: "start-up full ≤ 1.2× empty", met: f("ratio.startup") <= 1.2 },
  ];
}

interface Row {
  label: string;
  jitkey: string;
  naive?: string;
  ratio?: string;
  target?: string;
}

function format(value: number, digits = 0): string {
  if (!Number.isFinite(value)) return "n/a";
  return value.toLocaleString("en", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** The terminal table: each figure for jitkey and the naive broker, the ratio, the target and whether it was met. */
export function renderTable(figures: Figures, targets: Target[]): string {
  const f = (key: string) => num(figures, key);
  const met = new Map(targets.map((t) => [t.id, t]));
  const rows: (Row & { id?: string })[] = [
    {
      id: "mint_rps",
      label: "mint rps",
      jitkey: format(f("mint.rps")),
      naive: format(f("naive.mint.rps")),
      ratio: format(f("ratio.mint"), 2),
    },
    { label: "mint p50 ms", jitkey: format(f("mint.p50_ms"), 1), naive: format(f("naive.mint.p50_ms"), 1) },
    {
      id: "mint_p99",
      label: "mint p99 ms",
      jitkey: format(f("mint.p99_ms"), 1),
      naive: format(f("naive.mint.p99_ms"), 1),
      ratio: format(f("mint.p99_ms") / f("naive.mint.p99_ms"), 2),
    },
    {
      id: "introspect_rps",
      label: "introspect rps",
      jitkey: format(f("introspect.rps")),
      naive: format(f("naive.introspect.rps")),
      ratio: format(f("ratio.introspect"), 2),
    },
    {
      label: "introspect p99 ms",
      jitkey: format(f("introspect.p99_ms"), 1),
      naive: format(f("naive.introspect.p99_ms"), 1),
    },
    {
      id: "all_2xx",
      label: "answers not 2xx",
      jitkey: format(f("answers.non2xx")),
      naive: format(f("naive.answers.non2xx")),
    },
    {
      id: "memory",
      label: "Redis B / live lease (w/o audit)",
      jitkey: format(f("memory.bytes_per_lease")),
      naive: format(f("naive.memory.bytes_per_lease")),
      ratio: format(f("ratio.memory"), 2),
    },
    {
      label: "Redis B / live lease (all)",
      jitkey: format(f("memory.bytes_per_lease_with_audit")),
      naive: format(f("naive.memory.bytes_per_lease")),
    },
    {
      label: "Redis keys / live lease",
      jitkey: format(f("memory.keys_per_lease"), 2),
      naive: format(f("naive.memory.keys_per_lease"), 2),
    },
    { label: "audit B / event", jitkey: format(f("memory.bytes_per_audit_event")) },
    {
      label: `storm: leases in one second`,
      jitkey: `${format(f("storm.same_second"))} / ${format(f("storm.leases"))}`,
    },
    { label: "storm revoke lag p50 ms", jitkey: format(f("storm.lag_p50_ms")) },
    { id: "storm_lag", label: "storm revoke lag p99 ms", jitkey: format(f("storm.lag_p99_ms")) },
    {
      id: "storm_mint_p99",
      label: "storm mint p99 ms (without → with)",
      jitkey: `${format(f("storm.baseline_mint_p99_ms"))} → ${format(f("storm.mint_p99_ms"))}`,
      ratio: format(f("ratio.storm_mint_p99"), 2),
    },
    { id: "fanout_inactive", label: `fan-out inactive ms`, jitkey: format(f("fanout.inactive_ms"), 1) },
    { id: "fanout_revoked", label: "fan-out all revoked ms", jitkey: format(f("fanout.revoked_ms")) },
    {
      id: "reconcile_flat",
      label: "reconciler pass ms (0 → N)",
      jitkey: `${format(f("reconcile.ms_empty"), 1)} → ${format(f("reconcile.ms_full"), 1)}`,
      ratio: format(f("ratio.reconcile"), 2),
    },
    {
      id: "startup_flat",
      label: "start-up to ready ms (0 → N)",
      jitkey: `${format(f("startup.ready_ms_empty"))} → ${format(f("startup.ready_ms_full"))}`,
      ratio: format(f("ratio.startup"), 2),
    },
  ];
  const header = ["metric", "jitkey", "naive", "ratio", "target", "result"];
  const lines = rows.map((row) => {
    const target = row.id ? met.get(row.id) : undefined;
    return [
      row.label,
      row.jitkey,
      row.naive ?? "",
      row.ratio ?? "",
      target?.text ?? "",
      target ? (target.met ? "pass" : "MISS") : "",
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] ?? "").length)));
  const render = (cells: string[]) =>
    cells
      .map((cell, i) => (i === 0 || i >= 4 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0)))
      .join("  ");
  return [render(header), widths.map((w) => "-".repeat(w)).join("  "), ...lines.map(render)].join("\n");
}
