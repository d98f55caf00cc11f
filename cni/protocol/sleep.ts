// A blocking sleep for the synchronous paths of a plugin process: the entry point's writes to a
// full pipe, the lease store's retries of a busy open.
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Blocks the thread for `ms` milliseconds (for the synchronous paths of a plugin process). */
export function sleepSync(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}
