// One CNI invocation, whichever process runs it. `handleInvocation` is the whole protocol as a
// pure function of (env, stdin); `runInvocation` adds what every invocation gets around it —
// stdin larger than a config may be, the log sink, the last guard — so that the plugin
// executable (entry.ts, runPluginMain) and the agent's fast path (cni/fastpath/server.ts) give
// the same stdout, exit code and log lines.
import { statSync } from "node:fs";
import { MAX_CONFIG_BYTES, parseNetConf } from "./config.ts";
import { type CniEnv, parseCommand, parseEnv } from "./env.ts";
import { appendToLogFile } from "./files.ts";
import { convertResult } from "./result.ts";
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

/** A reply as CNI prints it: JSON and a newline. */
export function json(v: unknown): string {
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

export interface InvocationIo {
  /** The pid log lines carry: this process's, or the launcher's on the fast path. */
  pid: number;
  /** All of stdin; throws a CniError when it is larger than a config may be (code 5) or cannot be read. */
  readStdin(): Buffer;
  /** Where a log line goes when there is no log file or it cannot be written: fd 2, or the caller's stderr. */
  fallback(text: string): void;
  /** Sees every log line too, without the timestamp (the fast-path server's own log). */
  tee?: (line: string) => void;
  /** The environment handleInvocation reads, when it is not the invocation's own (see cni/fastpath/server.ts callerEnv). */
  pluginEnv?: Readonly<Record<string, string | undefined>>;
  /** The process running the invocation (Request.host). */
  host?: InvocationHost;
}

/**
 * One invocation as a plugin executable runs it: stdin that cannot be read or is larger than a
 * config may be is error 5 (except for VERSION, which ignores stdin); log lines go to
 * BERTH_CNI_LOG, else the config's logFile, else `io.fallback`; then handleInvocation, behind
 * a last guard that keeps stacks off stdout. Never throws.
 */
export async function runInvocation(
  plugin: Plugin,
  env: Readonly<Record<string, string | undefined>>,
  io: InvocationIo,
): Promise<InvocationOutcome> {
  const log = new InvocationLog(plugin.name, io.pid, env.BERTH_CNI_LOG || undefined, io.fallback, io.tee);
  let stdin: Buffer;
  try {
    stdin = io.readStdin();
  } catch (e) {
    const err = e instanceof CniError ? e : new CniError(ErrorCode.IoFailure, String(e));
    if (env.CNI_COMMAND !== "VERSION") {
      log.write(`error ${err.code}: ${err.message}`);
      return { stdout: json({ cniVersion: NEWEST_VERSION, code: err.code, msg: err.message }), exitCode: 1 };
    }
    stdin = Buffer.alloc(0);
  }
  log.useConfig(stdin);
  try {
    return await handleInvocation(plugin, io.pluginEnv ?? env, stdin, { log: (l) => log.write(l), host: io.host });
  } catch (e) {
    // handleInvocation does not throw; this is the last guard that keeps stacks off stdout.
    log.write(`internal error: ${(e as Error)?.stack ?? String(e)}`);
    return { stdout: json({ cniVersion: NEWEST_VERSION, code: ErrorCode.Internal, msg: "internal error" }), exitCode: 1 };
  }
}

/** An invocation's log sink: `<time> <plugin>[<pid>] <line>` to the log file, else to the fallback. */
class InvocationLog {
  constructor(
    private readonly name: string,
    private readonly pid: number,
    private file: string | undefined,
    private readonly fallback: (text: string) => void,
    private readonly tee: ((line: string) => void) | undefined,
  ) {}

  write(line: string): void {
    this.tee?.(`${this.name}[${this.pid}] ${line}`);
    const text = `${new Date().toISOString()} ${this.name}[${this.pid}] ${line}\n`;
    if (this.file) {
      try {
        appendToLogFile(this.file, text);
        return;
      } catch {
        // fall back
      }
    }
    this.fallback(text);
  }

  /** The config's logFile applies when BERTH_CNI_LOG does not. */
  useConfig(stdin: Buffer): void {
    if (this.file || stdin.length === 0 || !stdin.includes("logFile")) return;
    try {
      const f = (JSON.parse(stdin.toString("utf8")) as { logFile?: unknown }).logFile;
      if (typeof f === "string" && f !== "") this.file = f;
    } catch {
      // bad JSON is reported by handleInvocation
    }
  }
}
