// `berth csi` as a child process, started as a user starts it: its own socket, data and state
// dirs and node id on the command line. For the suites that reach the driver only through
// that socket (conformance/csi, conformance/robustness).
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";

const ROOT = join(import.meta.dirname, "..");

export interface BerthCsiProcess {
  child: ChildProcess;
  /** What the driver wrote on stderr so far. */
  log(): string;
  /** SIGTERM, then SIGKILL after 10 s; resolves once it exited. */
  stop(): Promise<void>;
  /** SIGKILL (of its process group, with `ownProcessGroup`); resolves once it exited. */
  kill(): Promise<void>;
}

export interface BerthCsiArgs {
  socket: string;
  dataDir: string;
  stateDir: string;
  /** Else the driver's default, the host name. */
  nodeId?: string;
  /** Run the command from the TypeScript sources (bin/cli.ts) instead of bin/berth (the bundle when built). */
  fromSources?: boolean;
  /**
   * Start it in its own process group, so that kill() takes the tools it runs (mkfs, e2fsck)
   * with it, as a service manager's would.
   */
  ownProcessGroup?: boolean;
  /** How long it may take to listen; default 30 s. */
  readyMs?: number;
}

/**
 * Starts the driver and resolves once it logs that it listens; rejects with its stderr if it
 * exits first or does not listen within `readyMs` (and then kills it).
 */
export async function startBerthCsi(a: BerthCsiArgs): Promise<BerthCsiProcess> {
  const entry = a.fromSources ? ["--import", "tsx", join(ROOT, "bin", "cli.ts")] : [join(ROOT, "bin", "berth")];
  const child = spawn(
    process.execPath,
    [
      ...entry,
      "csi",
      "--endpoint",
      `unix://${a.socket}`,
      "--data-dir",
      a.dataDir,
      "--state-dir",
      a.stateDir,
      ...(a.nodeId === undefined ? [] : ["--node-id", a.nodeId]),
    ],
    // Readiness is read from the info-level "listening" line.
    {
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, BERTH_LOG_LEVEL: "info" },
      detached: a.ownProcessGroup ?? false,
    },
  );
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const proc: BerthCsiProcess = {
    child,
    log: () => stderr,
    stop: () => stopProcess(child),
    kill: () => killProcess(child, a.ownProcessGroup ?? false),
  };
  const readyMs = a.readyMs ?? 30_000;
  try {
    await new Promise<void>((resolve, reject) => {
      const started = Date.now();
      const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
        clearInterval(timer);
        reject(new Error(`berth csi exited (${code ?? signal}) before listening:\n${stderr}`));
      };
      const timer = setInterval(() => {
        if (stderr.includes("csi driver listening")) {
          clearInterval(timer);
          child.off("exit", onExit);
          resolve();
        } else if (Date.now() - started > readyMs) {
          clearInterval(timer);
          child.off("exit", onExit);
          reject(new Error(`berth csi did not listen within ${readyMs} ms:\n${stderr}`));
        }
      }, 50);
      child.once("exit", onExit);
    });
  } catch (e) {
    await proc.kill();
    throw e;
  }
  return proc;
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  const gone = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await gone;
  clearTimeout(timer);
}

async function killProcess(child: ChildProcess, group: boolean): Promise<void> {
  if (exited(child)) return;
  const gone = new Promise<void>((r) => child.once("exit", () => r()));
  try {
    if (group && child.pid) process.kill(-child.pid, "SIGKILL");
    else child.kill("SIGKILL");
  } catch {
    child.kill("SIGKILL");
  }
  await gone;
}
