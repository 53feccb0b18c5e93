import type { CommandIo } from "./command.ts";

const FRAMES = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const SPIN_MS = 100;
/** In CI logs a line this often says the job still waits (a log line per spinner frame would flood it). */
const CI_REMINDER_MS = 30_000;

/**
 * What the CLI tells a person while it works, on stderr (stdout belongs to the command or to
 * `jitkey lease`'s output). On a terminal a spinner shows the wait for approval; in CI logs
 * (not a terminal, or `CI` set) plain lines.
 */
export class Progress {
  readonly #stderr: NodeJS.WriteStream;
  readonly interactive: boolean;
  #timer: NodeJS.Timeout | undefined;
  #spinning = false;

  constructor(io: CommandIo) {
    this.#stderr = io.stderr;
    this.interactive = io.stderr.isTTY === true && !io.env.CI;
  }

  /** One line, prefixed `jitkey:`. */
  say(text: string): void {
    this.#clearSpinner();
    this.#stderr.write(`jitkey: ${text}\n`);
  }

  /** Starts showing the wait for approval of `taskId`, with the command an operator runs. */
  waitingForApproval(taskId: string, approveCommand: string, timeoutSeconds: number): void {
    this.say(`task ${taskId} is pending approval; an operator approves it with:`);
    this.#stderr.write(`    ${approveCommand}\n`);
    const started = Date.now();
    const seconds = () => Math.round((Date.now() - started) / 1000);
    if (this.interactive) {
      let frame = 0;
      this.#spinning = true;
      this.#timer = setInterval(() => {
        frame = (frame + 1) % FRAMES.length;
        this.#stderr.write(
          `\r\x1b[2K${FRAMES[frame]} waiting for approval of ${taskId} (${seconds()} s of ${timeoutSeconds} s)`,
        );
      }, SPIN_MS);
    } else {
      this.#timer = setInterval(
        () =>
          this.say(`still waiting for approval of task ${taskId} (${seconds()} s of ${timeoutSeconds} s)`),
        CI_REMINDER_MS,
      );
    }
    this.#timer.unref();
  }

  /** Stops the spinner or the reminders. */
  doneWaiting(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#clearSpinner();
    this.#spinning = false;
  }

  #clearSpinner(): void {
    if (this.#spinning) this.#stderr.write("\r\x1b[2K");
  }
}
