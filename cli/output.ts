import type { OptionSpec, ParsedArgs } from "./command.ts";

export const OUTPUT_OPTION: Record<string, OptionSpec> = {
  output: { type: "string", value: "FORMAT", help: "table (default) or json, for scripts." },
};

export type OutputFormat = "table" | "json";

export function outputFormat(args: ParsedArgs): OutputFormat {
  return args.choice("output", ["table", "json"] as const, "table");
}

/** Pretty JSON and a newline. */
export function writeJson(out: NodeJS.WritableStream, value: unknown): void {
  out.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** A column of a table: its heading and how to show a row's cell. */
export interface Column<T> {
  heading: string;
  cell: (row: T) => string | undefined;
  /** Cut longer cells to this many characters. */
  maxWidth?: number;
}

/** A plain text table, columns padded to their widest cell; says so when there are no rows. */
export function writeTable<T>(
  out: NodeJS.WritableStream,
  columns: Column<T>[],
  rows: T[],
  empty: string,
): void {
  if (rows.length === 0) {
    out.write(`${empty}\n`);
    return;
  }
  const cells = rows.map((row) => columns.map((column) => clip(column.cell(row) ?? "-", column.maxWidth)));
  const widths = columns.map((column, i) =>
    Math.max(column.heading.length, ...cells.map((line) => line[i]?.length ?? 0)),
  );
  const render = (line: string[]) =>
    line
      .map((text, i) => (i === line.length - 1 ? text : text.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  out.write(`${[render(columns.map((column) => column.heading)), ...cells.map(render)].join("\n")}\n`);
}

function clip(text: string, maxWidth: number | undefined): string {
  const oneLine = text.replace(/\s+/g, " ");
  return maxWidth && oneLine.length > maxWidth ? `${oneLine.slice(0, maxWidth - 1)}…` : oneLine;
}

/** `2026-01-02T03:04:05.678Z` → `2026-01-02 03:04:05Z`: seconds are enough for people. */
export function shortTime(iso: string | undefined): string | undefined {
  return iso?.replace("T", " ").replace(/\.\d+Z$/, "Z");
}
