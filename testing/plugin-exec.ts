// Runs a CNI plugin executable exactly as a runtime does: CNI_* environment, config on stdin,
// result or error JSON on stdout. Black-box: knows nothing about the implementation behind it.
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { constants as osConstants, tmpdir } from "node:os";
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

const RUNNER = join(import.meta.dirname, "../native/build/Release/berth_cnirun");

/** Whether the native timing runner (native/bench/cnirun.c, built by `npm run build`) exists. */
export function timedRunnerAvailable(): boolean {
  return existsSync(RUNNER);
}

/**
 * Runs invocations through berth_cnirun, at most `parallel` at once, each timed from fork to
 * reaped exit by the runner itself, as a runtime's exec sees it: durationMs then leaves out
 * what Node's spawn and event loop add around a child. wallMs runs from the first fork to the
 * last exit. Stdin and outputs pass through files in a scratch directory.
 */
export async function execPluginsTimed(invs: CniInvocation[], parallel = 1): Promise<{ outcomes: CniOutcome[]; wallMs: number }> {
  const dir = mkdtempSync(join(tmpdir(), "cnirun-"));
  try {
    const parts: Buffer[] = [];
    for (const inv of invs) {
      const env = childEnvironment({ CNI_PATH: inv.cniPath, ...inv.env });
      const entries = Object.entries(env).map(([k, v]) => `${k}=${v}`);
      const stdin = Buffer.from(
        inv.stdin === undefined ? "" : typeof inv.stdin === "string" ? inv.stdin : JSON.stringify(inv.stdin),
      );
      for (const f of [join(inv.cniPath, inv.type), String(entries.length), ...entries, String(stdin.length)]) {
        if (f.includes("\0")) throw new Error(`execPluginsTimed: NUL in ${JSON.stringify(f)}`);
        parts.push(Buffer.from(`${f}\0`));
      }
      parts.push(stdin);
    }
    writeFileSync(join(dir, "spec"), Buffer.concat(parts));
    const report = await new Promise<string>((resolve, reject) => {
      execFile(RUNNER, [join(dir, "spec"), dir, String(parallel)], { maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`berth_cnirun failed: ${stderr || err.message}`));
        else resolve(stdout);
      });
    });
    const outcomes: CniOutcome[] = [];
    let wallMs = Number.NaN;
    for (const line of report.trim().split("\n")) {
      const w = /^wall (\d+)$/.exec(line);
      if (w) {
        wallMs = Number(w[1]) / 1e6;
        continue;
      }
      const m = /^(\d+) (exit|signal) (\d+) (\d+) (\d+)$/.exec(line);
      if (!m) throw new Error(`berth_cnirun: unexpected line ${JSON.stringify(line)}`);
      const i = Number(m[1]);
      const stdout = readFileSync(join(dir, `${i}.out`), "utf8");
      let json: unknown;
      try {
        json = stdout.trim() === "" ? undefined : JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      outcomes[i] = {
        exitCode: m[2] === "exit" ? Number(m[3]) : null,
        signal: m[2] === "signal" ? signalName(Number(m[3])) : null,
        stdout,
        stderr: readFileSync(join(dir, `${i}.err`), "utf8"),
        json,
        durationMs: (Number(m[5]) - Number(m[4])) / 1e6,
      };
    }
    return { outcomes, wallMs };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function signalName(n: number): NodeJS.Signals | null {
  const hit = Object.entries(osConstants.signals).find(([, v]) => v === n);
  return (hit?.[0] as NodeJS.Signals | undefined) ?? null;
}
