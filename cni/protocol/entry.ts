// The executable side of a CNI plugin: `runPluginMain` runs one invocation (invocation.ts,
// runInvocation) with the process I/O of a short-lived plugin executable, and `pluginEntry`
// makes a plugin bundle's entry of it.
import { fstatSync, readSync, writeSync } from "node:fs";
import { addonIfLoaded } from "../../native/addon.ts";
import { MAX_CONFIG_BYTES, tooLargeError } from "./config.ts";
import { runInvocation } from "./invocation.ts";
import { sleepSync } from "./sleep.ts";
import { CniError, ErrorCode, type Plugin } from "./types.ts";

/**
 * Reads all of stdin synchronously, stopping (with code 5) once it exceeds `limit`: the
 * cheapest read for a process that does nothing else meanwhile. A terminal counts as empty.
 */
export function readStdin(limit = MAX_CONFIG_BYTES, fd = 0): Buffer {
  try {
    if (fstatSync(fd).isCharacterDevice()) return Buffer.alloc(0);
  } catch {
    return Buffer.alloc(0); // stdin closed by the caller
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const chunk = Buffer.allocUnsafe(64 * 1024);
    let n: number;
    try {
      n = readSync(fd, chunk, 0, chunk.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // A non-blocking stdin (inherited O_NONBLOCK): wait for data without spinning hot.
      if (code === "EAGAIN") {
        sleepSync(2);
        continue;
      }
      if (code === "EOF") break;
      throw new CniError(ErrorCode.IoFailure, `cannot read stdin: ${(e as Error).message}`);
    }
    if (n === 0) break;
    total += n;
    if (total > limit) throw tooLargeError(limit);
    chunks.push(chunk.subarray(0, n));
  }
  return Buffer.concat(chunks, total);
}

/** What the process that loaded a plugin bundle offers it: boot.cjs, under the launcher's cold path. */
export interface ProcessHost {
  /**
   * Hands the exit code to the launcher, which then stops waiting for this process. Called as
   * the very last thing before the process ends; nothing may be written after it.
   */
  sendExitStatus?: (code: number) => void;
}

export interface MainOptions extends ProcessHost {
  /** Maximum stdin size (default 1 MiB). */
  maxStdinBytes?: number;
}

/**
 * A plugin bundle's entry (`export const main = pluginEntry(plugin, import.meta)` in its
 * main.ts): boot.cjs calls the returned main with its ProcessHost; run directly as the
 * process's main module (the bundle by `node`, or the source with tsx), it runs itself.
 */
export function pluginEntry(plugin: Plugin, meta: ImportMeta): (host?: ProcessHost) => Promise<never> {
  const main = (host: ProcessHost = {}) => runPluginMain(plugin, host);
  if (isMainModule(meta)) void main();
  return main;
}

function isMainModule(meta: ImportMeta): boolean {
  // A bundle is CommonJS: Node ran it itself when it is require.main (boot.cjs loads it as a
  // module of its own). The ES module source tree: its file is the script Node was given.
  if (typeof module === "object" && typeof require === "function") return require.main === module;
  return meta.filename !== undefined && meta.filename === process.argv[1];
}

/**
 * The `main` of a plugin executable: reads process.env and stdin, runs the invocation,
 * writes the JSON to stdout and exits (0 on success, 1 on error). Logs go to stderr, or are
 * appended to BERTH_CNI_LOG / the config's logFile when set. Called through pluginEntry;
 * as `void runPluginMain(plugin)` elsewhere: plugin bundles are CommonJS, which has no top-level await.
 */
export async function runPluginMain(plugin: Plugin, opts: MainOptions = {}): Promise<never> {
  const outcome = await runInvocation(plugin, process.env, {
    pid: process.pid,
    readStdin: () => readStdin(opts.maxStdinBytes),
    fallback: (text) => writeAllSync(2, text),
  });
  if (outcome.stdout) writeAllSync(1, outcome.stdout);
  // Exit now: a plugin may leave sockets or timers open that would keep Node alive. Once the
  // 'exit' handlers have run (boot.cjs writes its code cache there), skip Node's teardown of
  // the VM and its threads when the addon is at hand: output and logs are written already
  // (synchronously), the lease store's commits are on disk, and the kernel closes the rest.
  // Under the launcher's cold path, boot.cjs's status (opts.sendExitStatus) goes out first (its
  // process.reallyExit hook would not run after an _exit); nothing may be written after it.
  const native = addonIfLoaded();
  if (native) {
    process.once("exit", (code) => {
      opts.sendExitStatus?.(code);
      native.exitNow(code);
    });
  }
  process.exit(outcome.exitCode);
}

/**
 * Writes straight to the fd: going through process.stdout would load Node's net and stream
 * modules (several ms of a plugin's start-up) for one small write. Retries a non-blocking pipe.
 */
function writeAllSync(fd: number, text: string): void {
  const buf = Buffer.from(text);
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(fd, buf, off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") return; // reader gone: nothing left to tell
      sleepSync(2);
    }
  }
}
