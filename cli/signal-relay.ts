import type { ChildProcess } from "node:child_process";

const RELAYED: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** The reason an aborted wait rejects with: a signal asked the CLI to stop. */
export class StoppedBySignal extends Error {
  constructor(readonly signal: NodeJS.Signals) {
    super(`stopped by ${signal}`);
    this.name = "StoppedBySignal";
  }
}

/**
 * Catches SIGINT, SIGTERM and SIGHUP for as long as the CLI holds a task, so they end the
 * task rather than the process: before the command starts a signal aborts `signal` (the wait
 * for approval); once it runs each signal is passed on to it, and the CLI waits for it to end.
 */
export class SignalRelay {
  readonly #controller = new AbortController();
  readonly #listeners = new Map<NodeJS.Signals, () => void>();
  #child: ChildProcess | undefined;
  /** The first signal received, if any. */
  received: NodeJS.Signals | undefined;

  constructor() {
    for (const signal of RELAYED) {
      const listener = () => this.#onSignal(signal);
      this.#listeners.set(signal, listener);
      process.on(signal, listener);
    }
  }

  /** Aborts when the first signal arrives. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** From now on signals go to `child`. */
  relayTo(child: ChildProcess): void {
    this.#child = child;
  }

  /** Restores the default handling. */
  dispose(): void {
    for (const [signal, listener] of this.#listeners) process.off(signal, listener);
    this.#listeners.clear();
  }

  #onSignal(signal: NodeJS.Signals): void {
    this.received ??= signal;
    const child = this.#child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill(signal);
    if (!this.#controller.signal.aborted) this.#controller.abort(new StoppedBySignal(signal));
  }
}
