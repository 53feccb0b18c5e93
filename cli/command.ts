import { type ParseArgsConfig, parseArgs } from "node:util";
import { UsageError } from "./exit-codes.ts";

/** One option of a command, with what `--help` says about it. */
export interface OptionSpec {
  type: "string" | "boolean";
  multiple?: boolean;
  short?: string;
  /** The value's placeholder in help, e.g. `URL`. */
  value?: string;
  help: string;
}

/** The process's streams and environment, so tests and the dispatcher agree on one shape. */
export interface CommandIo {
  env: Record<string, string | undefined>;
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
}

/** A client subcommand of `jitkey`. */
export interface Command {
  name: string;
  /** What follows the command's name in the usage line, e.g. `ID [--note TEXT]`. */
  synopsis: string;
  /** One line for the command list. */
  summary: string;
  /** Paragraphs for the command's own help. */
  description: string;
  options: Record<string, OptionSpec>;
  /** Positional arguments allowed, or `command`: everything after `--` is a command to run. */
  positionals: { min: number; max: number; name: string } | "command";
  /** Shell lines that work as written (given the environment the description names). */
  examples: string[];
  run(args: ParsedArgs, io: CommandIo): Promise<number>;
}

/** Options every command takes. */
export const HELP_OPTION: Record<string, OptionSpec> = {
  help: { type: "boolean", short: "h", help: "Show this help." },
};
export const BROKER_OPTION: Record<string, OptionSpec> = {
  broker: { type: "string", value: "URL", help: "The broker's address (default: $JITKEY_URL)." },
};

/** What was parsed from a command's arguments. */
export class ParsedArgs {
  constructor(
    readonly commandName: string,
    private readonly values: Record<string, string | boolean | (string | boolean)[] | undefined>,
    readonly positionals: string[],
    /** For `positionals: "command"`: the command after `--`. */
    readonly command: string[],
  ) {}

  string(name: string): string | undefined {
    const value = this.values[name];
    return typeof value === "string" ? value : undefined;
  }

  strings(name: string): string[] {
    const value = this.values[name];
    return Array.isArray(value) ? value.map(String) : [];
  }

  flag(name: string): boolean {
    return this.values[name] === true;
  }

  /** A whole number option within bounds, or `fallback` when absent. */
  integer(name: string, bounds: { min: number; max?: number }, fallback: number): number;
  integer(name: string, bounds: { min: number; max?: number }): number | undefined;
  integer(name: string, bounds: { min: number; max?: number }, fallback?: number): number | undefined {
    const raw = this.string(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!/^\d+$/.test(raw.trim()) || value < bounds.min || (bounds.max !== undefined && value > bounds.max))
      throw new UsageError(
        `--${name} must be a whole number${bounds.max === undefined ? ` of at least ${bounds.min}` : ` from ${bounds.min} to ${bounds.max}`}, not ${JSON.stringify(raw)}`,
      );
    return value;
  }

  /** A string option limited to `choices`. */
  choice<T extends string>(name: string, choices: readonly T[], fallback: T): T {
    const raw = this.string(name) ?? fallback;
    if (!(choices as readonly string[]).includes(raw))
      throw new UsageError(`--${name} must be one of ${choices.join(", ")}, not ${JSON.stringify(raw)}`);
    return raw as T;
  }
}

/** Parses `argv` (after the command's name) with `node:util` parseArgs; `help` when asked for. */
export function parseCommandLine(command: Command, argv: string[]): ParsedArgs | "help" {
  let optionArgs = argv;
  let commandArgs: string[] = [];
  if (command.positionals === "command") {
    const separator = argv.indexOf("--");
    if (separator >= 0) {
      optionArgs = argv.slice(0, separator);
      commandArgs = argv.slice(separator + 1);
    }
  }
  const options: NonNullable<ParseArgsConfig["options"]> = {};
  for (const [name, spec] of Object.entries(command.options)) {
    options[name] = { type: spec.type, multiple: spec.multiple ?? false };
    if (spec.short) options[name].short = spec.short;
  }
  let parsed: {
    values: Record<string, string | boolean | (string | boolean)[] | undefined>;
    positionals: string[];
  };
  try {
    parsed = parseArgs({ args: optionArgs, options, strict: true, allowPositionals: true });
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_"))
      throw new UsageError(firstSentence((error as Error).message));
    throw error;
  }
  if (parsed.values.help === true) return "help";
  const { positionals } = parsed;
  if (command.positionals === "command") {
    if (positionals.length > 0)
      throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}; put the command after --`);
    if (commandArgs.length === 0) throw new UsageError("give the command to run after --");
  } else {
    const { min, max, name } = command.positionals;
    if (positionals.length < min) throw new UsageError(`missing ${name}`);
    if (positionals.length > max)
      throw new UsageError(`unexpected argument ${JSON.stringify(positionals[max])}`);
  }
  return new ParsedArgs(command.name, parsed.values, positionals, commandArgs);
}

/** parseArgs explains at length how to pass values starting with `-`; one sentence is enough here. */
function firstSentence(message: string): string {
  const sentence = message.split(/\.\s/)[0] ?? message;
  return sentence.replace(/\.$/, "").replace(/^Unknown option/, "unknown option");
}

/** The `--help` text of one command. */
export function commandHelp(command: Command): string {
  const rows = Object.entries(command.options).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : "    "}--${name}${spec.value ? ` ${spec.value}` : ""}`;
    return [flag, spec.help + (spec.multiple ? " Repeatable." : "")] as const;
  });
  const width = Math.max(...rows.map(([flag]) => flag.length)) + 2;
  return [
    `Usage: jitkey ${command.name} ${command.synopsis}`,
    "",
    command.description,
    "",
    "Options:",
    ...rows.map(([flag, text]) => `  ${flag.padEnd(width)}${text}`),
    "",
    command.examples.length > 1 ? "Examples:" : "Example:",
    ...command.examples.map((line) => `  ${line}`),
    "",
  ].join("\n");
}
