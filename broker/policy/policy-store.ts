import { type FSWatcher, watch } from "node:fs";
import { stat } from "node:fs/promises";
import { basename, dirname, resolve } from "node:path";
import { Counter, Gauge, type Registry } from "prom-client";
import type { Clock } from "../clock.ts";
import { type Config, type Environment, loadConfigFile, type ResourceConfig } from "../config.ts";
import { readCedarFiles } from "./cedar-files.ts";
import { CompiledPolicy } from "./compiled-policy.ts";
import { PolicyEngine } from "./policy-engine.ts";

/** The parts of the configuration a reload takes; everything else needs a restart. */
export type PolicySources = Pick<Config, "policies" | "policyFiles" | "policyClaims">;

/** What made a reload happen. */
export type ReloadTrigger = "start" | "sighup" | "file" | "manual";

export type ReloadResult =
  | { result: "applied" | "unchanged"; generation: number }
  | { result: "rejected"; generation: number; error: string };

/** Told after a new policy is in force. */
export interface PolicyReloadEvent {
  /** The generation now in force; every decision from here on uses it. */
  generation: number;
  trigger: ReloadTrigger;
  /** Re-check live leases with `engine.stillPermitted(lease, task)`. */
  engine: PolicyEngine;
}

export type PolicyReloadListener = (event: PolicyReloadEvent) => void | Promise<void>;

/** What the store logs through; the broker's logger fits. */
export interface PolicyLogger {
  info(message: string, meta?: Record<string, unknown>): unknown;
  warn(message: string, meta?: Record<string, unknown>): unknown;
  error(message: string, meta?: Record<string, unknown>): unknown;
}

export interface PolicyStoreOptions {
  /** The running catalog; a reload cannot add resources (adapters are built at start). */
  resources: readonly ResourceConfig[];
  /** Reads the policy parts of the configuration as they are now ({@link configFileSources}). */
  readSources: () => Promise<PolicySources>;
  /** The sources already read at start, so the first load does not read them again. */
  initial?: PolicySources;
  /** Relative `policyFiles` are taken from here: the config file's directory. */
  baseDir: string;
  /** Files whose change triggers a reload besides the policy files: the config file. */
  watchFiles?: readonly string[];
  logger: PolicyLogger;
  /** Where `jitkey_policy_*` metrics go: the broker's `metrics.registry`. */
  registry?: Registry;
  clock?: Clock;
  /** Quiet time after a file change before reloading; editors write in bursts. Default 250 ms. */
  debounceMs?: number;
}

/**
 * Holds the policy in force and replaces it without a restart: on SIGHUP, on a change of the
 * config file or a policy file ({@link watch}), or on {@link reload}. A new policy is read,
 * compiled and validated whole before it replaces the old one in a single step, so every
 * decision sees one generation; a broken one is logged, counted and rejected, and the old
 * one stays in force. Listeners ({@link onReload}) then re-check what the old policy let live.
 */
export class PolicyStore {
  readonly engine: PolicyEngine;
  readonly #options: PolicyStoreOptions;
  readonly #listeners = new Set<PolicyReloadListener>();
  readonly #reloads: Counter<"result"> | undefined;
  readonly #generationGauge: Gauge | undefined;
  #sources: PolicySources;
  #queue: Promise<unknown> = Promise.resolve();
  #watchers: FSWatcher[] = [];
  #watching = false;
  #debounce: NodeJS.Timeout | undefined;
  readonly #onSighup = () => {
    void this.reload("sighup");
  };

  private constructor(options: PolicyStoreOptions, sources: PolicySources, engine: PolicyEngine) {
    this.#options = options;
    this.#sources = sources;
    this.engine = engine;
    if (options.registry) {
      this.#reloads = new Counter({
        name: "jitkey_policy_reloads_total",
        help: "Policy reloads, by result: applied, unchanged, or rejected (the old policy stayed in force)",
        labelNames: ["result"] as const,
        registers: [options.registry],
      });
      this.#generationGauge = new Gauge({
        name: "jitkey_policy_generation",
        help: "Generation of the policy in force: 1 at start, one more per applied reload",
        registers: [options.registry],
      });
      for (const result of ["applied", "unchanged", "rejected"]) this.#reloads.inc({ result }, 0);
      this.#generationGauge.set(engine.generation);
    }
  }

  /**
   * Loads the policy for the first time. Throws {@link PolicyLoadError} (or the config's own
   * error) when it is broken: a broker does not start on a policy it cannot read.
   */
  static async open(options: PolicyStoreOptions): Promise<PolicyStore> {
    const sources = options.initial ?? (await options.readSources());
    const cedarFiles = await readCedarFiles(sources.policyFiles, options.baseDir);
    const engine = new PolicyEngine(
      { resources: [...options.resources], policies: sources.policies, policyClaims: sources.policyClaims },
      { cedarFiles, ...(options.clock ? { clock: options.clock } : {}) },
    );
    options.logger.info("policy loaded", {
      generation: engine.generation,
      policies: engine.compiled.sources.length,
      files: cedarFiles.map(({ path }) => path),
    });
    return new PolicyStore(options, sources, engine);
  }

  /** Calls `listener` after each applied reload. Returns a function that stops it. */
  onReload(listener: PolicyReloadListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Reads and compiles the policy again and, if it is sound and different, puts it in force
   * and tells the listeners (awaited; a listener that throws is logged). Reloads run one at
   * a time, in the order asked.
   */
  reload(trigger: ReloadTrigger = "manual"): Promise<ReloadResult> {
    const next = this.#queue.then(() => this.#reload(trigger));
    this.#queue = next.catch(() => undefined);
    return next;
  }

  /**
   * Reloads on SIGHUP and on changes to the config file and the policy files. Resolves once
   * the file watches are in place.
   */
  async watch(): Promise<void> {
    if (this.#watching) return;
    this.#watching = true;
    process.on("SIGHUP", this.#onSighup);
    await this.#rewatch();
  }

  /** Stops watching and listening; the policy in force stays. */
  close(): void {
    this.#watching = false;
    process.off("SIGHUP", this.#onSighup);
    clearTimeout(this.#debounce);
    for (const watcher of this.#watchers) watcher.close();
    this.#watchers = [];
    this.#listeners.clear();
  }

  async #reload(trigger: ReloadTrigger): Promise<ReloadResult> {
    const { logger } = this.#options;
    let compiled: CompiledPolicy;
    try {
      const sources = await this.#options.readSources();
      // Watch the files the new config names even if they turn out broken, so fixing them reloads.
      const filesChanged = JSON.stringify(sources.policyFiles) !== JSON.stringify(this.#sources.policyFiles);
      this.#sources = sources;
      if (filesChanged && this.#watching) await this.#rewatch();
      const cedarFiles = await readCedarFiles(sources.policyFiles, this.#options.baseDir);
      compiled = CompiledPolicy.compile({
        resources: this.#options.resources,
        policies: sources.policies,
        policyClaims: sources.policyClaims,
        cedarFiles,
      });
    } catch (error) {
      const message = (error as Error).message;
      this.#reloads?.inc({ result: "rejected" });
      logger.error("policy reload rejected; the policy in force stays", {
        trigger,
        generation: this.engine.generation,
        error: message,
      });
      return { result: "rejected", generation: this.engine.generation, error: message };
    }
    if (compiled.fingerprint === this.engine.compiled.fingerprint) {
      this.#reloads?.inc({ result: "unchanged" });
      logger.info("policy reload: unchanged", { trigger, generation: this.engine.generation });
      return { result: "unchanged", generation: this.engine.generation };
    }
    this.engine.replace(compiled);
    const generation = this.engine.generation;
    this.#reloads?.inc({ result: "applied" });
    this.#generationGauge?.set(generation);
    logger.info("policy reloaded", { trigger, generation, policies: compiled.sources.length });
    for (const listener of this.#listeners) {
      try {
        await listener({ generation, trigger, engine: this.engine });
      } catch (error) {
        logger.error("policy reload listener failed", { generation, error: (error as Error).message });
      }
    }
    return { result: "applied", generation };
  }

  /**
   * Watches directories, not files: editors and config managers replace a file by renaming
   * a new one over it, which ends a watch on the file itself.
   */
  async #rewatch(): Promise<void> {
    for (const watcher of this.#watchers) watcher.close();
    this.#watchers = [];
    const wanted = new Map<string, Set<string> | "cedar">();
    const want = (dir: string, name: string | "cedar") => {
      const current = wanted.get(dir);
      if (current === "cedar" && name !== "cedar") return;
      if (name === "cedar") wanted.set(dir, "cedar");
      else wanted.set(dir, (current instanceof Set ? current : new Set<string>()).add(name));
    };
    for (const file of this.#options.watchFiles ?? []) want(dirname(resolve(file)), basename(file));
    for (const configured of this.#sources.policyFiles) {
      const path = resolve(this.#options.baseDir, configured);
      const isDirectory = await stat(path).then(
        (stats) => stats.isDirectory(),
        () => false,
      );
      if (isDirectory) want(path, "cedar");
      else want(dirname(path), basename(path));
    }
    if (!this.#watching) return;
    for (const [dir, names] of wanted) {
      try {
        const watcher = watch(dir, { persistent: false }, (_event, filename) => {
          const name = filename?.toString();
          if (!name) return this.#schedule();
          if (names === "cedar" ? name.endsWith(".cedar") : names.has(name)) this.#schedule();
        });
        watcher.on("error", (error) => {
          this.#options.logger.warn("policy file watch failed", { dir, error: error.message });
        });
        this.#watchers.push(watcher);
      } catch (error) {
        this.#options.logger.warn("cannot watch policy files", { dir, error: (error as Error).message });
      }
    }
  }

  #schedule(): void {
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => void this.reload("file"), this.#options.debounceMs ?? 250);
    this.#debounce.unref();
  }
}

/**
 * Reads the policy parts of a config file as {@link loadConfigFile} does at start
 * (environment overrides included), validating the whole file.
 */
export function configFileSources(
  path: string,
  env: Environment = process.env,
): () => Promise<PolicySources> {
  return async () => {
    const config = await loadConfigFile({ ...env, JITKEY_CONFIG: path });
    if (!config) throw new Error(`no config file at ${path}`);
    return pickSources(config);
  };
}

/** The policy parts of a loaded config. */
export function pickSources(config: PolicySources): PolicySources {
  return { policies: config.policies, policyFiles: config.policyFiles, policyClaims: config.policyClaims };
}
