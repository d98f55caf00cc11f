// The Docker Engine (Debian's docker.io 20.10) as a real engine for tests: a private dockerd
// per test file, with its data root, exec root, socket and pid file in a test directory,
// vfs storage, no default bridge and no iptables rules; a busybox-static image made with
// `docker import` (no registry is reachable). Stopped by PID; every process, mount and file
// under the test directory goes in cleanup.
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { RUN } from "./kernel.ts";
import { httpOverUnix, until } from "./poll.ts";
import { unmountUnder } from "./storage.ts";

const run = promisify(execFile);

/** Debian's client, the daemon's own version (the newer /usr/local/bin/docker may speak a newer API). */
export const DOCKER_CLIENT = existsSync("/usr/bin/docker") ? "/usr/bin/docker" : "docker";
export const DOCKERD = "/usr/sbin/dockerd";
const BUSYBOX = "/usr/bin/busybox";
const APPLETS = [
  "sh",
  "true",
  "ping",
  "cat",
  "echo",
  "sleep",
  "dd",
  "df",
  "ls",
  "httpd",
  "wget",
  "ip",
  "ifconfig",
  "route",
  "nc",
  "rm",
];

/** Docker reads legacy plugins here (machine-wide): each test names its plugin uniquely. */
const REPO = resolve(import.meta.dirname, "..");

export const DOCKER_PLUGIN_DIR = "/run/docker/plugins";

/** What a Docker engine test needs and this machine lacks. */
export function missingForDockerTest(): string[] {
  return [DOCKERD, "/usr/bin/docker", BUSYBOX, "/usr/sbin/runc"].filter((f) => !existsSync(f));
}

/** `docker network create` argv of a berth network with berth IPAM (`plugin`) on `subnet`, with `-o` options. */
export function berthNetworkCreate(plugin: string, subnet: string, name: string, options: string[] = []): string[] {
  return [
    "network",
    "create",
    "-d",
    plugin,
    "--ipam-driver",
    plugin,
    "--subnet",
    subnet,
    ...options.flatMap((o) => ["-o", o]),
    name,
  ];
}

export interface DockerResult {
  stdout: string;
  stderr: string;
}

export interface DockerEngine {
  dir: string;
  socket: string;
  pid: number;
  /** The imported busybox image. */
  image: string;
  docker(args: string[], timeoutMs?: number): Promise<DockerResult>;
  /** Like docker() but resolves with the exit code instead of throwing. */
  tryDocker(args: string[], timeoutMs?: number): Promise<DockerResult & { code: number }>;
  /** Docker's own log, for failure messages. */
  log(): string;
  cleanup(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Processes whose command line names `dir` (dockerd's containerd and shims), by PID. */
function processesUsing(dir: string): number[] {
  const pids: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^[0-9]+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, "utf8").includes(dir)) pids.push(Number(e));
    } catch {
      // gone
    }
  }
  return pids;
}

async function stopPid(pid: number, graceMs: number): Promise<void> {
  if (!alive(pid)) return;
  try {
    process.kill(pid, "SIGTERM");
  } catch {}
  const deadline = Date.now() + graceMs;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (alive(pid)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
  }
}

/**
 * Starts a private dockerd under `dir` (which should carry the run tag, so the leak check
 * sees any mount it leaves) and imports a busybox image. With `netns`, dockerd runs in that
 * network namespace: a "host" of a multi-host test.
 */
export async function startDockerd(dir: string, options: { netns?: string } = {}): Promise<DockerEngine> {
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, "docker.sock");
  const logFile = join(dir, "dockerd.log");
  const out = openSync(logFile, "a");
  // nsenter switches only the network namespace (ip netns exec also remounts /sys, hiding
  // the cgroup hierarchy dockerd needs) and execs, keeping the PID.
  const daemon = options.netns ? ["nsenter", `--net=/run/netns/${options.netns}`, DOCKERD] : [DOCKERD];
  const child = spawn(
    daemon[0]!,
    [
      ...daemon.slice(1),
      "--data-root",
      join(dir, "data"),
      "--exec-root",
      join(dir, "exec"),
      "-H",
      `unix://${socket}`,
      "--pidfile",
      join(dir, "dockerd.pid"),
      "--storage-driver",
      "vfs",
      "--bridge",
      "none",
      "--iptables=false",
      "--ip6tables=false",
      "--userland-proxy=false",
    ],
    { stdio: ["ignore", out, out], detached: false },
  );
  const pid = child.pid;
  if (!pid) throw new Error("dockerd did not start");
  child.unref();
  const env: NodeJS.ProcessEnv = { ...process.env, DOCKER_HOST: `unix://${socket}` };
  delete env.DOCKER_CONTEXT;
  const docker = (args: string[], timeoutMs = 60_000) =>
    run(DOCKER_CLIENT, ["-H", `unix://${socket}`, ...args], { env, timeout: timeoutMs, encoding: "utf8" });
  const tryDocker = async (args: string[], timeoutMs = 60_000) => {
    try {
      return { ...(await docker(args, timeoutMs)), code: 0 };
    } catch (e) {
      const err = e as { stdout?: string; stderr?: string; code?: number };
      return { stdout: err.stdout ?? "", stderr: err.stderr ?? String(e), code: typeof err.code === "number" ? err.code : 1 };
    }
  };
  const log = () => {
    try {
      return readFileSync(logFile, "utf8");
    } catch {
      return "";
    }
  };
  const engine: DockerEngine = {
    dir,
    socket,
    pid,
    image: `bt${RUN}busybox:1`,
    docker,
    tryDocker,
    log,
    async cleanup() {
      const ids = (await tryDocker(["ps", "-aq"], 20_000)).stdout.split("\n").filter(Boolean);
      if (ids.length > 0) await tryDocker(["rm", "-f", ...ids], 60_000);
      const nets = (await tryDocker(["network", "ls", "-q", "--filter", "type=custom"], 20_000)).stdout
        .split("\n")
        .filter(Boolean);
      for (const n of nets) await tryDocker(["network", "rm", n], 20_000);
      await stopPid(pid, 20_000);
      for (const p of processesUsing(dir)) await stopPid(p, 5_000);
      unmountUnder(dir);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await until(
      async () => (await tryDocker(["version", "--format", "{{.Server.Version}}"], 5_000)).code,
      (code) => code === 0,
      "dockerd to answer",
      30_000,
      200,
    );
    const rootfs = join(dir, "rootfs");
    for (const d of ["bin", "tmp", "proc", "sys", "dev", "etc", "data"]) mkdirSync(join(rootfs, d), { recursive: true });
    copyFileSync(BUSYBOX, join(rootfs, "bin", "busybox"));
    for (const a of APPLETS) symlinkSync("busybox", join(rootfs, "bin", a));
    const tar = join(dir, "busybox.tar");
    execFileSync("tar", ["-C", rootfs, "-cf", tar, "."]);
    await docker(["import", tar, engine.image]);
  } catch (e) {
    const text = log().split("\n").slice(-20).join("\n");
    await engine.cleanup();
    throw new Error(`${(e as Error).message}\ndockerd log:\n${text}`);
  }
  return engine;
}

export interface DockerPluginProcess {
  child: ChildProcess;
  /** What the plugin wrote so far (stdout and stderr). */
  log(): string;
}

/**
 * Starts `berth docker-plugin --socket SOCKET ...args` from the sources (inside `netns` when
 * given) and resolves once it answers Plugin.Activate; `onOutput` also gets everything it writes.
 */
export async function startDockerPlugin(o: {
  socket: string;
  args: string[];
  netns?: string;
  env?: NodeJS.ProcessEnv;
  onOutput?: (text: string) => void;
}): Promise<DockerPluginProcess> {
  const command = [
    process.execPath,
    "--import",
    "tsx",
    join(REPO, "bin/cli.ts"),
    "docker-plugin",
    "--socket",
    o.socket,
    ...o.args,
  ];
  const argv = o.netns ? ["ip", "netns", "exec", o.netns, ...command] : command;
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], cwd: REPO, env: o.env ?? process.env });
  let log = "";
  const collect = (d: Buffer) => {
    log += d;
    o.onOutput?.(d.toString());
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  await until(
    () => httpOverUnix(o.socket, "/Plugin.Activate", { method: "POST", body: "" }).then((r) => r.status),
    (s) => s === 200,
    `the plugin to answer on ${o.socket}; log: ${log.slice(-2000)}`,
    30_000,
    100,
  );
  return { child, log: () => log };
}

/** Sends `signal` to a plugin started by startDockerPlugin and waits for its exit; nothing when it is gone already. */
export async function stopDockerPlugin(p: ChildProcess | undefined, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (!p?.pid || p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise((r) => p.once("exit", r));
  process.kill(p.pid, signal);
  await exited;
}
