// Delegation: run another CNI plugin (usually IPAM) found in CNI_PATH with the caller's
// CNI_* environment and a config on stdin, the way bridge runs host-local. The delegate's
// result comes back in the newest shape; its error comes back as a CniError with its code.
import { accessSync, constants, statSync } from "node:fs";
import { join } from "node:path";
import { MAX_CONFIG_BYTES } from "../protocol/config.ts";
import { parseResult } from "../protocol/result.ts";
import { CniError, type Command, ErrorCode, type NetConf, type Request, type Result } from "../protocol/types.ts";
import { isSupportedVersion, NEWEST_VERSION } from "../protocol/version.ts";

export interface DelegateOptions {
  /** Kill the delegate after this long (default 60 s) and fail with code 11 (try again later). */
  timeoutMs?: number;
  /** Receives the delegate's stderr (default: copied to our stderr, which the runtime logs). */
  onStderr?: (chunk: Buffer) => void;
}

/** What delegation reads from a Request: the caller's environment and CNI_PATH. */
export type DelegateRequest = Pick<Request, "env" | "path">;

/** A delegate's config: an object (serialized as JSON) or the exact bytes to pass on. */
export type DelegateConfig = NetConf | Record<string, unknown> | Buffer | string;

const DEFAULT_TIMEOUT_MS = 60_000;

export async function delegateAdd(
  type: string,
  config: DelegateConfig,
  req: DelegateRequest,
  opts?: DelegateOptions,
): Promise<Result> {
  const out = await runDelegate("ADD", type, config, req, opts);
  if (out.trim() === "") throw new CniError(ErrorCode.DecodeFailure, `delegate "${type}" ADD succeeded but printed no result`);
  return parseResult(decode(out, type), configVersion(config), `result of delegate "${type}"`);
}

export async function delegateDel(
  type: string,
  config: DelegateConfig,
  req: DelegateRequest,
  opts?: DelegateOptions,
): Promise<void> {
  await runDelegate("DEL", type, config, req, opts);
}

export async function delegateCheck(
  type: string,
  config: DelegateConfig,
  req: DelegateRequest,
  opts?: DelegateOptions,
): Promise<void> {
  await runDelegate("CHECK", type, config, req, opts);
}

export async function delegateGc(
  type: string,
  config: DelegateConfig,
  req: DelegateRequest,
  opts?: DelegateOptions,
): Promise<void> {
  await runDelegate("GC", type, config, req, opts);
}

export async function delegateStatus(
  type: string,
  config: DelegateConfig,
  req: DelegateRequest,
  opts?: DelegateOptions,
): Promise<void> {
  await runDelegate("STATUS", type, config, req, opts);
}

/**
 * The executable for plugin `type`: the first regular, executable file of that name in the
 * CNI_PATH directories. A type is a bare file name: "/" or ".." would escape CNI_PATH (code 7).
 */
export function findPlugin(type: string, path: readonly string[]): string {
  if (typeof type !== "string" || type === "" || type.includes("/") || type === "." || type === ".." || type.includes("\0")) {
    throw new CniError(ErrorCode.InvalidConfig, `invalid config: plugin type ${JSON.stringify(type)} must be a plain file name`);
  }
  for (const dir of path) {
    const file = join(dir, type);
    try {
      if (!statSync(file).isFile()) continue;
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here, or not executable: keep looking, as libcni's FindInPath does
    }
  }
  throw new CniError(
    ErrorCode.InvalidConfig,
    `invalid config: plugin type "${type}" not found in CNI_PATH`,
    path.length ? `searched: ${path.join(":")}` : "CNI_PATH is empty",
  );
}

function configBytes(config: DelegateConfig): Buffer {
  if (Buffer.isBuffer(config)) return config;
  return Buffer.from(typeof config === "string" ? config : JSON.stringify(config));
}

/** The version the delegate answers in, used to read a result that omits its own cniVersion. */
function configVersion(config: DelegateConfig): typeof NEWEST_VERSION {
  let v: unknown;
  if (Buffer.isBuffer(config) || typeof config === "string") {
    try {
      v = (JSON.parse(config.toString()) as { cniVersion?: unknown }).cniVersion;
    } catch {
      return NEWEST_VERSION;
    }
  } else {
    v = config.cniVersion;
  }
  return isSupportedVersion(v) ? v : v === undefined ? "0.1.0" : NEWEST_VERSION;
}

function decode(stdout: string, type: string): unknown {
  try {
    return JSON.parse(stdout);
  } catch {
    throw new CniError(ErrorCode.DecodeFailure, `delegate "${type}" printed invalid JSON`, firstLine(stdout));
  }
}

function firstLine(s: string): string {
  return (s.trim().split("\n")[0] ?? "").slice(0, 300);
}

/** Runs the delegate and returns its stdout on success; a failure becomes a CniError. */
export async function runDelegate(
  command: Command,
  type: string,
  config: DelegateConfig,
  req: DelegateRequest,
  opts: DelegateOptions = {},
): Promise<string> {
  const file = findPlugin(type, req.path);
  // Loaded on first use: node:child_process costs a plugin process ~10 ms it mostly does not need.
  const { spawn } = await import("node:child_process");
  const env: Record<string, string> = {
    // The delegate needs little beyond CNI_*, but a PATH lets it run helpers (dhcp, iptables).
    PATH: process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ...req.env,
    CNI_COMMAND: command,
  };
  if (!env.CNI_PATH) env.CNI_PATH = req.path.join(":");
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const onStderr = opts.onStderr ?? ((c: Buffer) => process.stderr.write(c));

  const { code, signal, stdout, timedOut, overflow } = await new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    timedOut: boolean;
    overflow: boolean;
  }>((resolve, reject) => {
    const child = spawn(file, [], { env, stdio: ["pipe", "pipe", "pipe"], timeout: timeoutMs, killSignal: "SIGKILL" });
    const chunks: Buffer[] = [];
    let size = 0;
    let overflow = false;
    child.stdout.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_CONFIG_BYTES) {
        // A delegate that floods stdout is broken; stop it rather than buffer without bound.
        if (!overflow) child.kill("SIGKILL");
        overflow = true;
        return;
      }
      chunks.push(c);
    });
    child.stderr.on("data", onStderr);
    // EPIPE when the delegate exits without reading its stdin: its exit status tells the story.
    child.stdin.on("error", () => {});
    child.on("error", (e: NodeJS.ErrnoException) => {
      reject(new CniError(ErrorCode.Internal, `cannot run delegate "${type}" (${file}): ${e.code ?? e.message}`));
    });
    child.on("close", (code, signal) => {
      const timedOut = signal === "SIGKILL" && !overflow && child.killed;
      resolve({ code, signal, stdout: Buffer.concat(chunks).toString("utf8"), timedOut, overflow });
    });
    child.stdin.end(configBytes(config));
  });

  if (timedOut) throw new CniError(ErrorCode.TryAgainLater, `delegate "${type}" ${command} timed out after ${timeoutMs} ms`);
  if (overflow)
    throw new CniError(ErrorCode.IoFailure, `delegate "${type}" ${command} printed more than ${MAX_CONFIG_BYTES} bytes`);
  if (code === 0) return stdout;
  throw delegateError(type, command, stdout, code, signal);
}

/** A failed delegate's error, read leniently: libcni's error objects carry no cniVersion, some carry no code. */
function delegateError(
  type: string,
  command: Command,
  stdout: string,
  code: number | null,
  signal: NodeJS.Signals | null,
): CniError {
  const how = signal ? `was killed by ${signal}` : `exited with status ${code}`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch {
    const said = firstLine(stdout);
    return new CniError(
      ErrorCode.Internal,
      `delegate "${type}" ${command} ${how}${said ? `: ${said}` : " and printed no error"}`,
    );
  }
  const e = (parsed ?? {}) as { code?: unknown; msg?: unknown; details?: unknown };
  const errCode = typeof e.code === "number" && Number.isInteger(e.code) && e.code > 0 ? e.code : ErrorCode.Internal;
  const msg = typeof e.msg === "string" && e.msg !== "" ? e.msg : `delegate "${type}" ${command} ${how}`;
  const details = typeof e.details === "string" && e.details !== "" ? e.details : undefined;
  return new CniError(errCode, `${type}: ${msg}`, details);
}
