// Runs a CNI plugin executable exactly as a runtime does: CNI_* environment, config on stdin,
// result or error JSON on stdout. Black-box: knows nothing about the implementation behind it.
import { spawn } from "node:child_process";
import { join } from "node:path";

export type CniCommand = "ADD" | "DEL" | "CHECK" | "GC" | "STATUS" | "VERSION";

export interface CniInvocation {
  /** Directory holding the plugin executables; also passed as CNI_PATH unless env overrides it. */
  cniPath: string;
  /** Executable name inside cniPath (the config's `type`). */
  type: string;
  /** CNI_* variables. A key set to undefined is left out, which is how tests drop a required one. */
  env: Partial<Record<string, string | undefined>>;
  /** Bytes for stdin; undefined closes stdin without writing anything. */
  stdin?: string | object;
  timeoutMs?: number;
}

export interface CniOutcome {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as one JSON value, or undefined when stdout is empty or not JSON. */
  json: unknown;
  durationMs: number;
}

/** The environment a plugin child sees: PATH and berth's own knobs, never the parent's CA or proxy settings. */
function childEnvironment(cniVars: CniInvocation["env"]): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
  for (const [k, v] of Object.entries(process.env)) if (k.startsWith("BERTH_") && v !== undefined) env[k] = v;
  for (const [k, v] of Object.entries(cniVars)) if (v !== undefined) env[k] = v;
  return env;
}

export function execPlugin(inv: CniInvocation): Promise<CniOutcome> {
  const started = process.hrtime.bigint();
  const env = childEnvironment({ CNI_PATH: inv.cniPath, ...inv.env });
  return new Promise((resolve, reject) => {
    const child = spawn(join(inv.cniPath, inv.type), [], { env, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    // A hung plugin must not hang the suite: kill this child (by its own pid) after the timeout.
    const timer = setTimeout(() => child.kill("SIGKILL"), inv.timeoutMs ?? 30_000);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (exitCode, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString("utf8");
      let json: unknown;
      if (stdout.trim() !== "") {
        try {
          json = JSON.parse(stdout);
        } catch {
          json = undefined;
        }
      }
      resolve({
        exitCode,
        signal,
        stdout,
        stderr: Buffer.concat(err).toString("utf8"),
        json,
        durationMs: Number(process.hrtime.bigint() - started) / 1e6,
      });
    });
    child.stdin.on("error", () => {
      // the plugin may exit without reading stdin (VERSION); EPIPE is not our failure
    });
    if (inv.stdin === undefined) child.stdin.end();
    else child.stdin.end(typeof inv.stdin === "string" ? inv.stdin : JSON.stringify(inv.stdin));
  });
}

/** The error object a plugin printed, when it printed one. */
export interface CniErrorJson {
  cniVersion?: string;
  code: number;
  msg: string;
  details?: string;
}

export function asCniError(json: unknown): CniErrorJson | undefined {
  if (typeof json !== "object" || json === null) return undefined;
  const o = json as Record<string, unknown>;
  if (typeof o.code !== "number" || typeof o.msg !== "string") return undefined;
  return o as unknown as CniErrorJson;
}

/** One-line summary of an outcome for failure messages. */
export function describeOutcome(o: CniOutcome): string {
  const body = o.stdout.trim().replace(/\s+/g, " ").slice(0, 200);
  const err = o.stderr.trim().replace(/\s+/g, " ").slice(0, 120);
  return `exit ${o.exitCode ?? o.signal}, stdout ${body === "" ? "(empty)" : body}${err ? `, stderr ${err}` : ""}`;
}
