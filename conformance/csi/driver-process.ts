// `berth csi` as a child process, started as a user starts it: its own socket, data and state
// dirs and node id on the command line. The suites reach the driver only through that socket.
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";

const ROOT = join(import.meta.dirname, "..", "..");

export interface CsiDriverProcess {
  child: ChildProcess;
  /** What the driver wrote on stderr so far. */
  log(): string;
  /** SIGTERM, then SIGKILL after 10 s; resolves once it exited. */
  stop(): Promise<void>;
}

export interface CsiDriverArgs {
  socket: string;
  dataDir: string;
  stateDir: string;
  nodeId: string;
  /** Run the command from the TypeScript sources (bin/cli.ts) instead of bin/berth (the bundle when built). */
  fromSources?: boolean;
}

/** Starts the driver and resolves once it listens; rejects with its stderr if it exits first. */
export async function startBerthCsi(a: CsiDriverArgs): Promise<CsiDriverProcess> {
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
      "--node-id",
      a.nodeId,
    ],
    { cwd: ROOT, stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.on("data", (d) => {
    stderr += d;
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      if (stderr.includes("csi driver listening")) {
        clearInterval(timer);
        resolve();
      }
    }, 50);
    child.once("exit", (code) => {
      clearInterval(timer);
      reject(new Error(`berth csi exited with ${code} before listening:\n${stderr}`));
    });
  });
  return { child, log: () => stderr, stop: () => stopProcess(child) };
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}
