// The undo stack of a half-done ADD.

/** Undo steps of a half-done ADD, run in reverse on failure; their own errors are logged away. */
export class Undo {
  private readonly steps: (() => unknown)[] = [];
  push(step: () => unknown): void {
    this.steps.push(step);
  }
  /**
   * Runs an ADD body and, when it fails, the undo steps right there — while the netlink
   * sockets the steps use are still open (withRtnl closes them on the way out) — then rethrows.
   */
  async guard<T>(body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (e) {
      await this.run();
      throw e;
    }
  }
  /** Runs the steps once, newest first; a second call finds nothing left to do. */
  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step();
      } catch {
        // best effort: the original error is what the runtime must see
      }
    }
  }
}
