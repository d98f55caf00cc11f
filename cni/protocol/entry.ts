// The executable side of a CNI plugin. `handleInvocation` is the whole protocol as a pure
// function of (env, stdin) — the agent's fast path calls it in-process — and
// `runPluginMain` wraps it with the process I/O of a short-lived plugin executable.
import { fstatSync, readSync, statSync, writeSync } from "node:fs";
import { addonIfLoaded } from "../../native/addon.ts";
import { MAX_CONFIG_BYTES, parseNetConf, tooLargeError } from "./config.ts";
import { type CniEnv, parseCommand, parseEnv } from "./env.ts";
import { appendToLogFile } from "./files.ts";
import { convertResult } from "./result.ts";
import { sleepSync } from "./sleep.ts";
import {
  awaitDurable,
  CniError,
  COLD_PATH_HOST,
  type Command,
  ErrorCode,
  type InvocationHost,
  type Plugin,
  type Request,
} from "./types.ts";
import { type CniVersion, isSupportedVersion, NEWEST_VERSION, requireCommandInVersion, SUPPORTED_VERSIONS } from "./version.ts";

export interface InvocationOptions {
  /** Where diagnostics go (one line each); never stdout. Default: dropped. */
  log?: (line: string) => void;
  /** The process running the invocation (Request.host). Default: COLD_PATH_HOST. */
  host?: InvocationHost;
}

export interface InvocationOutcome {
  /** The result or error JSON (with a trailing newline), or "" for a successful DEL/CHECK/GC/STATUS. */
  stdout: string;
  exitCode: number;
}

/** Runs one CNI invocation against `plugin`. Never throws: every failure becomes error JSON. */
export async function handleInvocation(
  plugin: Plugin,
  env: Readonly<Record<string, string | undefined>>,
  stdin: Buffer,
  opts: InvocationOptions = {},
): Promise<InvocationOutcome> {
  const log = opts.log ?? (() => {});
  let version: CniVersion | undefined;
  let command: Command | undefined;
  try {
    command = parseCommand(env);
    if (command === "VERSION") return { stdout: json(versionReply(stdin)), exitCode: 0 };

    // Environment before config, as libcni does: a missing variable is the likelier mistake.
    const cniEnv = parseEnv(env, { knownArgs: plugin.cniArgs });
    const parsed = parseNetConf(stdin, { command });
    version = parsed.version;
    if (parsed.droppedPrevResult) log(`DEL: prevResult ignored: ${parsed.droppedPrevResult}`);
    requireCommandInVersion(command, version);
    if (cniEnv.netns && !cniEnv.netnsOverride) refuseOwnNetns(cniEnv.netns);

    const req = buildRequest(cniEnv, parsed.config, stdin, opts.host ?? COLD_PATH_HOST);
    switch (command) {
      case "ADD": {
        const result = await plugin.add(req);
        await awaitDurable(req);
        return { stdout: json(convertResult(result, version)), exitCode: 0 };
      }
      case "DEL":
        await plugin.del(req);
        break;
      case "CHECK":
        await plugin.check(req);
        break;
      case "GC":
        // A plugin without GC/STATUS has nothing to collect and is always ready (libcni does the same).
        await plugin.gc?.(req);
        break;
      case "STATUS":
        await plugin.status?.(req);
        break;
    }
    await awaitDurable(req);
    return { stdout: "", exitCode: 0 };
  } catch (e) {
    const err = asCniError(e, log);
    let details = err.details;
    if (!details && err.code === ErrorCode.InvalidEnvironment && !env.CNI_COMMAND) {
      details = `${plugin.name}: a CNI plugin; supported versions ${SUPPORTED_VERSIONS.join(", ")}`;
    }
    log(`${command ?? "?"} ${env.CNI_CONTAINERID ?? ""} ${env.CNI_IFNAME ?? ""}: error ${err.code}: ${err.message}`);
    const reply: Record<string, unknown> = {
      cniVersion: version ?? versionForError(stdin),
      code: err.code,
      msg: err.message,
    };
    if (details) reply.details = details;
    return { stdout: json(reply), exitCode: 1 };
  }
}

function json(v: unknown): string {
  return `${JSON.stringify(v)}\n`;
}

/** VERSION echoes the config's version when it names a supported one; stdin may be empty or absent. */
function versionReply(stdin: Buffer): { cniVersion: string; supportedVersions: string[] } {
  return { cniVersion: versionForError(stdin), supportedVersions: [...SUPPORTED_VERSIONS] };
}

/** Best effort, for replies written before (or without) a validated config. */
export function versionForError(stdin: Buffer): CniVersion {
  if (stdin.length === 0 || stdin.length > MAX_CONFIG_BYTES) return NEWEST_VERSION;
  try {
    const v = (JSON.parse(stdin.toString("utf8")) as { cniVersion?: unknown } | null)?.cniVersion;
    return isSupportedVersion(v) ? v : NEWEST_VERSION;
  } catch {
    return NEWEST_VERSION;
  }
}

function buildRequest(env: CniEnv, config: Request["config"], stdin: Buffer, host: InvocationHost): Request {
  return {
    command: env.command,
    containerId: env.containerId,
    netns: env.netns,
    ifname: env.ifname,
    args: env.args,
    path: env.path,
    config,
    stdin,
    env: env.vars,
    pendingSync: [],
    host,
  };
}

/** This process's own netns, stat'ed once: the agent checks every invocation against it. */
let ownNetns: { dev: number; ino: number } | undefined;

/**
 * libcni's guard: a CNI_NETNS that is the plugin's own namespace would configure the host
 * (plugins#714). Compared by device and inode; a path that cannot be stat'ed is left for the
 * plugin to report (DEL must tolerate a vanished netns).
 */
function refuseOwnNetns(netns: string): void {
  let target: { dev: number; ino: number } | undefined;
  try {
    target = statSync(netns, { throwIfNoEntry: false });
    ownNetns ??= statSync("/proc/self/ns/net");
  } catch {
    return;
  }
  if (target && target.dev === ownNetns.dev && target.ino === ownNetns.ino) {
    throw new CniError(
      ErrorCode.InvalidNetns,
      `CNI_NETNS ${netns} is the plugin's own network namespace; set CNI_NETNS_OVERRIDE=1 to allow it`,
    );
  }
}

/** Any thrown value → a CniError; unexpected ones become 999 with a one-line message, the stack only in the log. */
function asCniError(e: unknown, log: (line: string) => void): CniError {
  if (e instanceof CniError) return e;
  const err = e instanceof Error ? e : new Error(String(e));
  log(`internal error: ${err.stack ?? err.message}`);
  const code = (err as { code?: unknown }).code;
  const firstLine = err.message.split("\n")[0] ?? "";
  const msg = `internal error: ${typeof code === "string" ? `${code}: ` : ""}${firstLine}`.slice(0, 500);
  return new CniError(ErrorCode.Internal, msg);
}

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
  const env = process.env;
  const log = makeLogger(plugin.name, env);
  let outcome: InvocationOutcome;
  let stdin: Buffer;
  try {
    stdin = readStdin(opts.maxStdinBytes);
  } catch (e) {
    const err = e instanceof CniError ? e : new CniError(ErrorCode.IoFailure, String(e));
    if (env.CNI_COMMAND !== "VERSION") {
      log.write(`error ${err.code}: ${err.message}`);
      writeAllSync(1, json({ cniVersion: NEWEST_VERSION, code: err.code, msg: err.message }));
      process.exit(1);
    }
    stdin = Buffer.alloc(0);
  }
  log.useConfig(stdin);
  try {
    outcome = await handleInvocation(plugin, env, stdin, { log: log.write });
  } catch (e) {
    // handleInvocation does not throw; this is the last guard that keeps stacks off stdout.
    log.write(`internal error: ${(e as Error)?.stack ?? String(e)}`);
    outcome = { stdout: json({ cniVersion: NEWEST_VERSION, code: ErrorCode.Internal, msg: "internal error" }), exitCode: 1 };
  }
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

function makeLogger(name: string, env: NodeJS.ProcessEnv) {
  let file = env.BERTH_CNI_LOG || undefined;
  const write = (line: string) => {
    const text = `${new Date().toISOString()} ${name}[${process.pid}] ${line}\n`;
    if (file) {
      try {
        appendToLogFile(file, text);
        return;
      } catch {
        // fall back to stderr
      }
    }
    writeAllSync(2, text);
  };
  return {
    write,
    /** The config's logFile applies when BERTH_CNI_LOG does not. */
    useConfig(stdin: Buffer) {
      if (file || stdin.length === 0 || !stdin.includes("logFile")) return;
      try {
        const f = (JSON.parse(stdin.toString("utf8")) as { logFile?: unknown }).logFile;
        if (typeof f === "string" && f !== "") file = f;
      } catch {
        // bad JSON is reported by handleInvocation
      }
    },
  };
}
