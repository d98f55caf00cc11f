// `berth doctor`: checks that this host has what berth needs and says how to fix what is
// missing. One line per check; exit 0 only when every required check passes.
import { execFileSync } from "node:child_process";
import { accessSync, constants, existsSync, readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { release } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { gunzipSync } from "node:zlib";
import { addon } from "../native/addon.ts";
import { readMountInfo } from "../native/mount.ts";
import { createNetns, deleteNetns, Netns } from "../native/netns.ts";

export type CheckStatus = "ok" | "MISSING" | "warn";

export interface CheckResult {
  name: string;
  status: CheckStatus;
  /** What the check found on this host. */
  found: string;
  /** How to fix it (absent when ok). */
  fix?: string;
}

export interface DoctorOptions {
  /** Where output goes (default: stdout). */
  write?: (text: string) => void;
  /** Where usage errors go (default: stderr). */
  writeError?: (text: string) => void;
  /** Name of the throwaway netns (default berth-doctor-<pid>). */
  scratchNetns?: string;
  /** Directories searched for tools (default: $PATH plus /usr/sbin and /sbin). */
  searchPath?: string[];
}

const USAGE = `usage: berth doctor [--json] [--data-dir <dir>]

Checks privileges, kernel features and tools berth needs on this host.
  --json            print the results as JSON
  --data-dir <dir>  berth's data directory (default $BERTH_DATA_DIR or /var/lib/berth)
`;

const CAP_NET_ADMIN = 12;
const CAP_SYS_ADMIN = 21;
// LOOP_CONFIGURE (attach in one ioctl) arrived in Linux 5.8.
const MIN_KERNEL: [number, number] = [5, 8];

function ok(name: string, found: string): CheckResult {
  return { name, status: "ok", found };
}
function missing(name: string, found: string, fix: string): CheckResult {
  return { name, status: "MISSING", found, fix };
}
function warn(name: string, found: string, fix: string): CheckResult {
  return { name, status: "warn", found, fix };
}

function errorText(e: unknown): string {
  if (e && typeof e === "object" && "stderr" in e) {
    const stderr = String((e as { stderr: unknown }).stderr).trim();
    if (stderr) return stderr.split("\n")[0] ?? stderr;
  }
  return e instanceof Error ? e.message : String(e);
}

function findTool(name: string, dirs: string[]): string | null {
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

function checkPrivileges(): CheckResult[] {
  const uid = process.getuid?.() ?? -1;
  const status = readFileSync("/proc/self/status", "utf8");
  const capEff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? "0"}`);
  const has = (bit: number) => (capEff >> BigInt(bit)) & 1n;
  const grant = "run berth as root, or grant it (privileged container, or systemd AmbientCapabilities=)";
  return [
    uid === 0
      ? ok("root", "uid 0")
      : warn("root", `uid ${uid}`, "berth normally runs as root; the capabilities below are what matter"),
    has(CAP_NET_ADMIN)
      ? ok("CAP_NET_ADMIN", "effective")
      : missing("CAP_NET_ADMIN", "not in the effective set", `needed for links, addresses and routes: ${grant}`),
    has(CAP_SYS_ADMIN)
      ? ok("CAP_SYS_ADMIN", "effective")
      : missing("CAP_SYS_ADMIN", "not in the effective set", `needed for netns, mounts and loop devices: ${grant}`),
  ];
}

function checkKernel(): CheckResult {
  const rel = release();
  const [major = 0, minor = 0] = rel.split(/[.-]/).map(Number);
  const [wantMajor, wantMinor] = MIN_KERNEL;
  if (major > wantMajor || (major === wantMajor && minor >= wantMinor)) return ok("kernel", `Linux ${rel}`);
  return missing("kernel", `Linux ${rel}`, `berth needs Linux ${wantMajor}.${wantMinor} or newer (LOOP_CONFIGURE)`);
}

// Everything native goes through the addon; when it does not load, the checks that need it are skipped.
function checkAddon(): CheckResult {
  try {
    addon();
    return ok("native addon", "loaded");
  } catch (e) {
    return missing("native addon", errorText(e), "build it with `npm run build` (needs a C++ compiler and Node headers)");
  }
}

const NETNS_DIR = "/run/netns";

// Removes throwaway namespaces left by doctor runs that were killed mid-check.
function removeStaleScratch(deleteNetns: (name: string) => boolean): void {
  let names: string[] = [];
  try {
    names = readdirSync(NETNS_DIR);
  } catch {
    return;
  }
  for (const name of names) {
    const pid = /^berth-doctor-(\d+)$/.exec(name)?.[1];
    if (pid && pid !== String(process.pid) && !existsSync(`/proc/${pid}`)) deleteNetns(name);
  }
}

/** Link kinds berth creates, each tried inside the throwaway netns. */
const LINK_KINDS: { kind: string; args: string[]; module: string }[] = [
  { kind: "veth", args: ["link", "add", "dr-veth0", "type", "veth", "peer", "name", "dr-veth1"], module: "veth" },
  { kind: "bridge", args: ["link", "add", "dr-br0", "type", "bridge"], module: "bridge" },
  { kind: "vxlan", args: ["link", "add", "dr-vx0", "type", "vxlan", "id", "42", "dstport", "4789"], module: "vxlan" },
  // macvlan needs a parent device: the veth created above serves.
  {
    kind: "macvlan",
    args: ["link", "add", "dr-mv0", "link", "dr-veth0", "type", "macvlan", "mode", "bridge"],
    module: "macvlan",
  },
];

function checkNetworking(haveAddon: boolean, scratch: string, toolDirs: string[]): CheckResult[] {
  const kinds = LINK_KINDS.map((k) => `${k.kind} links`);
  if (!haveAddon) {
    return [
      missing("netns", "not checked", "needs the native addon"),
      ...kinds.map((n) => warn(n, "not checked", "needs the native addon")),
    ];
  }
  const results: CheckResult[] = [];
  removeStaleScratch((n) => deleteNetns(n));
  try {
    createNetns(scratch);
  } catch (e) {
    results.push(
      missing("netns", `cannot create a network namespace: ${errorText(e)}`, "needs CAP_SYS_ADMIN and a writable /run/netns"),
    );
    return [...results, ...kinds.map((n) => warn(n, "not checked", "needs a network namespace"))];
  }
  const linkResults: CheckResult[] = [];
  let entered: string | undefined;
  try {
    const ns = Netns.open(scratch);
    try {
      ns.enter(() => undefined);
    } finally {
      ns.close();
    }
    const ip = findTool("ip", toolDirs);
    for (const k of LINK_KINDS) {
      const name = `${k.kind} links`;
      if (!ip) {
        linkResults.push(warn(name, "not checked: iproute2 `ip` not found", "install iproute2 to let doctor try this link kind"));
        continue;
      }
      try {
        execFileSync(ip, ["-n", scratch, ...k.args], { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
        linkResults.push(ok(name, "created one in a throwaway netns"));
      } catch (e) {
        linkResults.push(
          missing(
            name,
            `kernel refused: ${errorText(e)}`,
            `load the module (modprobe ${k.module}) or enable it in the kernel config`,
          ),
        );
      }
    }
  } catch (e) {
    entered = errorText(e);
  }
  // Deleting the namespace deletes every link created inside it.
  let deleted: string | undefined;
  try {
    deleteNetns(scratch);
  } catch (e) {
    deleted = errorText(e);
  }
  if (entered) results.push(missing("netns", `created one but cannot enter it: ${entered}`, "needs CAP_SYS_ADMIN (setns)"));
  else if (deleted)
    results.push(
      warn(
        "netns",
        `created and entered one, but deleting ${NETNS_DIR}/${scratch} failed: ${deleted}`,
        `remove it: ip netns del ${scratch}`,
      ),
    );
  else results.push(ok("netns", "created, entered and deleted a throwaway network namespace"));
  results.push(...(entered ? kinds.map((n) => warn(n, "not checked", "needs a network namespace")) : linkResults));
  return results;
}

function checkLoopControl(): CheckResult {
  try {
    if (statSync("/dev/loop-control").isCharacterDevice()) return ok("/dev/loop-control", "present");
    return missing("/dev/loop-control", "not a character device", "recreate it: mknod /dev/loop-control c 10 237");
  } catch {
    return missing("/dev/loop-control", "absent", "modprobe loop; in a container, mount the host's /dev");
  }
}

/**
 * The tools berth runs, each check with the Debian/Ubuntu package that holds its tools (the
 * name `berth doctor` tells the operator to install; scripts/setup.sh installs them all).
 */
export const TOOL_CHECKS: { name: string; tools: string[]; pkg: string; why: string; required: boolean }[] = [
  {
    name: "mkfs.ext4",
    tools: ["mkfs.ext4", "resize2fs", "e2fsck"],
    pkg: "e2fsprogs",
    why: "formatting, checking and growing ext4 block volumes",
    required: true,
  },
  {
    name: "mkfs.xfs",
    tools: ["mkfs.xfs", "xfs_growfs"],
    pkg: "xfsprogs",
    why: "only volumes with fsType xfs need it",
    required: false,
  },
  {
    name: "fsfreeze",
    tools: ["fsfreeze"],
    pkg: "util-linux",
    why: "consistent snapshots of mounted block volumes",
    required: false,
  },
  { name: "nft", tools: ["nft"], pkg: "nftables", why: "ipMasq and port mapping program nftables", required: true },
  {
    name: "conntrack",
    tools: ["conntrack"],
    pkg: "conntrack",
    why: "portmap flushes stale UDP conntrack entries of mapped ports",
    required: false,
  },
];

function checkTools(dirs: string[]): CheckResult[] {
  return TOOL_CHECKS.map(({ name, tools, pkg, why, required }) => {
    const found = tools.map((t) => [t, findTool(t, dirs)] as const);
    const absent = found.filter(([, p]) => !p).map(([t]) => t);
    if (absent.length === 0) return ok(name, found.map(([, p]) => p).join(", "));
    const fix = `install ${pkg} (${why})`;
    return required
      ? missing(name, `${absent.join(", ")} not on PATH`, fix)
      : warn(name, `${absent.join(", ")} not on PATH`, fix);
  });
}

function checkIpForward(): CheckResult {
  let value = "";
  try {
    value = readFileSync("/proc/sys/net/ipv4/ip_forward", "utf8").trim();
  } catch (e) {
    return warn("ip forwarding", `cannot read net.ipv4.ip_forward: ${errorText(e)}`, "check /proc/sys is mounted");
  }
  if (value === "1") return ok("ip forwarding", "net.ipv4.ip_forward = 1");
  return warn(
    "ip forwarding",
    `net.ipv4.ip_forward = ${value}`,
    "the bridge plugin turns it on when isGateway is set; to set it yourself: sysctl -w net.ipv4.ip_forward=1",
  );
}

function existingAncestor(path: string): string {
  let p = path;
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  return realpathSync(p);
}

// When the kernel exposes its config, say whether it can do project quotas at all.
function kernelQuotaSupport(): string | null {
  let config: string;
  try {
    config = gunzipSync(readFileSync("/proc/config.gz")).toString("utf8");
  } catch {
    return null;
  }
  const on = (opt: string) => new RegExp(`^${opt}=[ym]$`, "m").test(config);
  if (on("CONFIG_XFS_QUOTA") || (on("CONFIG_QUOTA") && on("CONFIG_QFMT_V2"))) return null;
  return "this kernel cannot do project quotas (CONFIG_XFS_QUOTA and CONFIG_QFMT_V2 are off)";
}

function checkProjectQuota(haveAddon: boolean, dataDir: string): CheckResult {
  const name = "project quota";
  const fallback = "dir-volume capacity falls back to loop-backed filesystems";
  const enable = "mount the data dir's filesystem with prjquota (XFS, or ext4 made with -O project,quota)";
  const dir = existingAncestor(dataDir);
  // The mount holding `dir` is the one with the longest mount point that prefixes it.
  const mount = readMountInfo()
    .filter((m) => dir === m.mountPoint || dir.startsWith(m.mountPoint === "/" ? "/" : `${m.mountPoint}/`))
    .reduce<{ mountPoint: string; fsType: string } | undefined>(
      (best, m) => (!best || m.mountPoint.length >= best.mountPoint.length ? m : best),
      undefined,
    );
  const where = `${dataDir}${dir !== dataDir ? ` (not created yet; checked ${dir})` : ""} is on ${mount?.fsType ?? "?"} at ${mount?.mountPoint ?? "?"}`;
  if (!haveAddon) return warn(name, `${where}; not checked without the native addon`, fallback);
  try {
    const info = addon().quotaGetInfo(dir, 2);
    if (info) return ok(name, `${where}, project quota enabled`);
    const kernel = kernelQuotaSupport();
    if (kernel)
      return warn(name, `${where}; ${kernel}`, `${fallback}; to enforce it on directories, use a kernel with them and ${enable}`);
    return warn(name, `${where}, project quota not enabled`, `${fallback}; to enforce it on directories, ${enable}`);
  } catch (e) {
    return warn(name, `${where}, no quota support (${errorText(e)})`, `${fallback}; to enforce it on directories, ${enable}`);
  }
}

function parseArgs(args: string[]): { json: boolean; dataDir: string; help: boolean } | string {
  let json = false;
  let help = false;
  let dataDir = process.env.BERTH_DATA_DIR || "/var/lib/berth";
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--json") json = true;
    else if (a === "--help" || a === "-h") help = true;
    else if (a === "--data-dir") {
      const v = args[++i];
      if (!v) return "--data-dir needs a directory";
      dataDir = v;
    } else if (a?.startsWith("--data-dir=")) dataDir = a.slice("--data-dir=".length);
    else return `unknown argument "${a}"`;
  }
  if (!dataDir.startsWith("/")) return `--data-dir must be an absolute path, got "${dataDir}"`;
  return { json, dataDir, help };
}

/** Runs every check; never throws for a missing feature (that is a MISSING line). */
export function doctorChecks(dataDir: string, options: DoctorOptions = {}): CheckResult[] {
  const toolDirs = options.searchPath ?? [...(process.env.PATH ?? "").split(delimiter).filter(Boolean), "/usr/sbin", "/sbin"];
  const addonResult = checkAddon();
  const haveAddon = addonResult.status === "ok";
  return [
    ...checkPrivileges(),
    checkKernel(),
    addonResult,
    ...checkNetworking(haveAddon, options.scratchNetns ?? `berth-doctor-${process.pid}`, toolDirs),
    checkLoopControl(),
    ...checkTools(toolDirs),
    checkIpForward(),
    checkProjectQuota(haveAddon, dataDir),
  ];
}

export async function runDoctor(args: string[], options: DoctorOptions = {}): Promise<number> {
  const write = options.write ?? ((t: string) => process.stdout.write(t));
  const parsed = parseArgs(args);
  if (typeof parsed === "string") {
    (options.writeError ?? ((t: string) => process.stderr.write(t)))(`berth doctor: ${parsed}\n${USAGE}`);
    return 2;
  }
  if (parsed.help) {
    write(USAGE);
    return 0;
  }
  const checks = doctorChecks(parsed.dataDir, options);
  const healthy = checks.every((c) => c.status !== "MISSING");
  if (parsed.json) {
    write(`${JSON.stringify({ ok: healthy, checks }, null, 2)}\n`);
  } else {
    const width = Math.max(...checks.map((c) => c.name.length));
    for (const c of checks) {
      write(`${c.status.padEnd(7)} ${c.name.padEnd(width)}  ${c.found}${c.fix ? ` — fix: ${c.fix}` : ""}\n`);
    }
    const missingCount = checks.filter((c) => c.status === "MISSING").length;
    write(healthy ? "berth can run on this host\n" : `${missingCount} required item(s) missing\n`);
  }
  return healthy ? 0 : 1;
}
