// Podman as a real CNI engine for tests: private config (runc, cgroupfs, vfs storage,
// explicit ulimits, CNI backend), a busybox-static root filesystem (no image registry is
// reachable), and a network config dir pointing at berth's plugins.
import { execFile, execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

function commandExists(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** What an engine test needs and this machine lacks: plugins in `cniDir`, commands on PATH, files. */
export function missingForEngineTest(need: { cniDir: string; plugins: string[]; commands: string[]; files: string[] }): string[] {
  return [
    ...need.plugins.filter((p) => !existsSync(join(need.cniDir, p))).map((p) => `${need.cniDir}/${p}`),
    ...need.commands.filter((c) => !commandExists(c)),
    ...need.files.filter((f) => !existsSync(f)),
  ];
}

export interface PodmanEnv {
  dir: string;
  rootfs: string;
  netconfDir: string;
  env: NodeJS.ProcessEnv;
  podman(args: string[], timeoutMs?: number): Promise<{ stdout: string; stderr: string }>;
  cleanup(): Promise<void>;
}

const BUSYBOX = "/usr/bin/busybox";
const APPLETS = [
  "sh",
  "ip",
  "ping",
  "nc",
  "sleep",
  "cat",
  "echo",
  "wget",
  "httpd",
  "hostname",
  "ifconfig",
  "route",
  "dd",
  "head",
  "wc",
];

/** Creates a private Podman environment under `dir` whose CNI plugins come from `pluginDirs`. */
export function makePodmanEnv(dir: string, pluginDirs: string[]): PodmanEnv {
  if (!existsSync(BUSYBOX)) throw new Error("busybox-static is required for the Podman tests (apt-get install busybox-static)");
  const rootfs = join(dir, "rootfs");
  const netconfDir = join(dir, "netconf");
  for (const d of [
    join(rootfs, "bin"),
    join(rootfs, "tmp"),
    join(rootfs, "proc"),
    join(rootfs, "sys"),
    join(rootfs, "dev"),
    netconfDir,
    join(dir, "store"),
    join(dir, "run"),
  ]) {
    mkdirSync(d, { recursive: true });
  }
  copyFileSync(BUSYBOX, join(rootfs, "bin", "busybox"));
  for (const a of APPLETS) {
    const p = join(rootfs, "bin", a);
    if (!existsSync(p)) symlinkSync("busybox", p);
  }
  writeFileSync(
    join(dir, "containers.conf"),
    `[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "${join(dir, "run")}"
[network]
network_backend = "cni"
cni_plugin_dirs = [${pluginDirs.map((d) => JSON.stringify(d)).join(", ")}]
network_config_dir = "${netconfDir}"
`,
  );
  writeFileSync(
    join(dir, "storage.conf"),
    `[storage]
driver = "vfs"
graphroot = "${join(dir, "store")}"
runroot = "${join(dir, "run")}"
`,
  );
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CONTAINERS_CONF: join(dir, "containers.conf"),
    CONTAINERS_STORAGE_CONF: join(dir, "storage.conf"),
  };
  delete env.NODE_EXTRA_CA_CERTS;
  const podman = (args: string[], timeoutMs = 60_000) =>
    run("podman", ["--root", join(dir, "store"), "--runroot", join(dir, "run"), ...args], {
      env,
      timeout: timeoutMs,
      encoding: "utf8",
    });
  return {
    dir,
    rootfs,
    netconfDir,
    env,
    podman,
    async cleanup() {
      try {
        await podman(["rm", "-af", "-t", "0"]);
      } catch {
        // nothing to remove
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
