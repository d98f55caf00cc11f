// `berth install` and `berth uninstall`: lay a release out on a host (or an image root) and take
// it away again.
//
// install copies the release tree (RELEASE.json lists it) under the prefix, the berth-* plugin
// launchers into the CNI bin dir, one network config into the CNI conf dir, and the service
// units and /etc/berth/berth.env into the systemd dir. Each launcher copy carries the absolute
// path of the Node binary running the install and of the bundles under the prefix
// (cni/fastpath/launcher/launcher.c, berth_install_paths): a cold plugin call never depends on the
// runtime's PATH or on where the bin dir is; --copy-node puts a copy of that Node under the
// prefix, for a target that has none (a Kubernetes node). Run from a checkout, install first stages the tree
// `npm run release` would pack (scripts/release.mjs) and installs that.
//
// Every file written is recorded with its SHA-256 in <prefix>/manifest.json. From it:
//  - a file that already holds the wanted bytes is never rewritten (engines watch the conf dir);
//  - a file install did not write is never replaced without --force;
//  - a config (network config, units, berth.env) changed since install wrote it is kept, as
//    a package keeps a changed conffile; an executable or bundle is replaced;
//  - every write goes to a temporary file in the same directory, fsync, rename: a plugin call
//    racing an upgrade runs the old or the new file, never a half-written one;
//  - a failure part-way puts back every file it replaced and removes what it added;
//  - uninstall removes exactly the recorded files, and refuses (without --force) when one was
//    changed since; state (/var/lib/berth) stays unless --purge.
// Bad input (unknown flag, relative path, a bin dir that is a file, no permission) is one line
// on stderr and exit code 2, before anything is written.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  fsyncSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import Module from "node:module";
import { tmpdir } from "node:os";
import { basename, dirname, isAbsolute, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { familyOf, type IpPrefix, parseIpPrefix, Subnet } from "../cni/address/address.ts";
import { readMountInfo } from "../native/mount.ts";

export const DEFAULTS = {
  prefix: "/usr/local/lib/berth",
  cniBinDir: "/opt/cni/bin",
  cniConfDir: "/etc/cni/net.d",
  systemdDir: "/etc/systemd/system",
};
const ENV_FILE = "/etc/berth/berth.env";
const STATE_DIR = "/var/lib/berth";
const CONFLIST = "10-berth.conflist";
/** Where --copy-node puts the Node binary, under the prefix. */
const NODE_COPY = "bin/node";
const MANIFEST = "manifest.json";
/** The prefix the shipped units name; install writes its own prefix in their place. */
const SHIPPED_PREFIX = "/usr/local/lib/berth";
/** launcher.c: INSTALL_MARKER and the size of berth_install_paths. */
const LAUNCHER_MARKER = "BERTH-INSTALL-PATHS-V1";
const LAUNCHER_AREA = 4096;

const USAGE = `usage: berth install [--prefix DIR] [--cni-bin-dir DIR] [--cni-conf-dir DIR]
                     [--network bridge|overlay|none] [--subnet CIDR]
                     [--systemd-dir DIR | --no-systemd] [--root DIR]
                     [--node PATH | --copy-node]
                     [--dry-run] [--force]
       berth uninstall [--prefix DIR] [--root DIR] [--purge] [--dry-run] [--force]

  --prefix DIR        the release's home (default ${DEFAULTS.prefix}); its manifest.json lists
                      every file install wrote, with its SHA-256
  --cni-bin-dir DIR   where the berth-* plugins are copied (default ${DEFAULTS.cniBinDir})
  --cni-conf-dir DIR  where ${CONFLIST} is written (default ${DEFAULTS.cniConfDir})
  --network NET       bridge (default: berth-bridge, host-local, portmap, firewall, bandwidth),
                      overlay (berth-overlay, portmap, bandwidth), none (no config)
  --subnet CIDR       the bridge network's range (default 10.86.0.0/16)
  --systemd-dir DIR   where berth.service, berth-cni.socket and berth-csi.socket go
                      (default ${DEFAULTS.systemdDir}), with ${ENV_FILE}
  --no-systemd        no units and no ${ENV_FILE}
  --root DIR          install into an image or chroot: every path above is under DIR
  --node PATH         the Node binary plugins and the service run, as the target sees it
                      (default: the Node running this install; under --root, the target's)
  --copy-node         copy the Node running this install to <prefix>/${NODE_COPY} and record
                      that copy, for a target without a Node of its own (a Kubernetes node
                      installed from berth's image); uninstall removes it. The copy needs the
                      shared libraries that Node links (glibc and libstdc++; ldd names them)
                      on the target. Implied when install runs from that copy
  --dry-run           print every path that would be written or removed; change nothing
  --force             replace files install did not write (or configs edited since);
                      uninstall: remove files changed since install
  --purge             uninstall: also delete ${STATE_DIR} (leases, volumes' state)
`;

/** Bad input: one line, exit code 2, nothing written. */
export class InstallUsageError extends Error {}

type Network = "bridge" | "overlay" | "none";

export interface InstallOptions {
  /** The Node binary the plugins and the service run, as the target sees it. */
  node: string;
  /** node is a copy of the running Node, written under the prefix. */
  copyNode: boolean;
  prefix: string;
  cniBinDir: string;
  cniConfDir: string;
  network: Network;
  subnet?: string;
  systemdDir: string | null;
  root: string;
  dryRun: boolean;
  force: boolean;
  purge: boolean;
}

type Kind = "exec" | "file" | "config";

interface ManifestEntry {
  path: string;
  sha256: string;
  kind: Kind;
}

interface Manifest {
  berth: string;
  node: string;
  prefix: string;
  cniBinDir: string;
  cniConfDir: string;
  network: Network;
  systemdDir: string | null;
  /** Directories install created (removed by uninstall when empty). */
  dirs: string[];
  files: ManifestEntry[];
}

interface Planned {
  path: string;
  data: Buffer;
  mode: number;
  kind: Kind;
}

const sha256 = (data: Buffer | string) => createHash("sha256").update(data).digest("hex");

function parseArgs(command: "install" | "uninstall", argv: string[]): InstallOptions | "help" {
  const o: InstallOptions = {
    ...DEFAULTS,
    node: process.execPath,
    copyNode: false,
    network: "bridge",
    root: "/",
    dryRun: false,
    force: false,
    purge: false,
  };
  const pathFlags: Record<string, "node" | "prefix" | "cniBinDir" | "cniConfDir" | "systemdDir" | "root"> = {
    "--prefix": "prefix",
    "--cni-bin-dir": "cniBinDir",
    "--cni-conf-dir": "cniConfDir",
    "--systemd-dir": "systemdDir",
    "--root": "root",
  };
  if (command === "install") pathFlags["--node"] = "node";
  let systemdDirGiven = false;
  let noSystemd = false;
  let nodeGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--help" || a === "-h") return "help";
    const eq = a.startsWith("--") ? a.indexOf("=") : -1;
    const flag = eq > 0 ? a.slice(0, eq) : a;
    const value = (): string => {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined || v === "" || (eq < 0 && v.startsWith("--"))) throw new InstallUsageError(`${flag} needs a value`);
      return v;
    };
    const boolean = () => {
      if (eq > 0) throw new InstallUsageError(`${flag} takes no value`);
    };
    if (flag in pathFlags) {
      const v = value();
      if (!isAbsolute(v)) throw new InstallUsageError(`${flag} must be an absolute path, got ${JSON.stringify(v)}`);
      const key = pathFlags[flag]!;
      const p = normalize(v).replace(/(.)\/+$/, "$1");
      if (key !== "root" && p === "/") throw new InstallUsageError(`${flag} cannot be /`);
      o[key] = p;
      if (key === "systemdDir") systemdDirGiven = true;
      if (key === "node") nodeGiven = true;
    } else if (flag === "--network" && command === "install") {
      const v = value();
      if (v !== "bridge" && v !== "overlay" && v !== "none")
        throw new InstallUsageError(`--network must be bridge, overlay or none, got ${JSON.stringify(v)}`);
      o.network = v;
    } else if (flag === "--subnet" && command === "install") o.subnet = checkSubnet(value());
    else if (flag === "--no-systemd") {
      boolean();
      noSystemd = true;
    } else if (flag === "--copy-node" && command === "install") {
      boolean();
      o.copyNode = true;
    } else if (flag === "--dry-run") {
      boolean();
      o.dryRun = true;
    } else if (flag === "--force") {
      boolean();
      o.force = true;
    } else if (flag === "--purge" && command === "uninstall") {
      boolean();
      o.purge = true;
    } else
      throw new InstallUsageError(
        `unknown ${a.startsWith("-") ? "flag" : "argument"} ${JSON.stringify(a)} (berth ${command} --help)`,
      );
  }
  if (noSystemd && systemdDirGiven) throw new InstallUsageError("--systemd-dir and --no-systemd exclude each other");
  if (noSystemd) o.systemdDir = null;
  if (o.copyNode && nodeGiven) throw new InstallUsageError("--node and --copy-node exclude each other");
  // Run again from the copy (the installed bin/berth names it): keep it, rather than record it and remove it.
  if (!nodeGiven && o.root === "/" && process.execPath === join(o.prefix, NODE_COPY)) o.copyNode = true;
  if (o.copyNode) o.node = join(o.prefix, NODE_COPY);
  if (o.subnet !== undefined && o.network !== "bridge")
    throw new InstallUsageError(`--subnet applies to --network bridge (the overlay's subnets are the agent's leases)`);
  return o;
}

function checkSubnet(v: string): string {
  const bad = () => new InstallUsageError(`--subnet must be a CIDR such as 10.86.0.0/16, got ${JSON.stringify(v)}`);
  let p: IpPrefix;
  try {
    p = parseIpPrefix(v);
  } catch {
    throw bad();
  }
  // host-local needs room for the gateway and at least one address.
  if (p.prefix > (p.ip.family === 4 ? 30 : 126)) throw bad();
  if (Subnet.containing(p.ip, p.prefix).network !== p.ip.value) throw new InstallUsageError(`--subnet ${v} has host bits set`);
  return v;
}

/** The path p on disk: under the install root. */
/**
 * The path p (absolute, as the target system sees it) on disk: under the install root, with
 * every symbolic link on the way resolved as the target system would resolve it. An image or a
 * host mounted at /host has absolute links (var/run -> /run, opt -> /usr/opt) that would
 * otherwise point into the system running the install. ".." never leaves the root.
 */
function under(root: string, p: string): string {
  if (root === "/") return p;
  const todo = p.split("/").filter(Boolean);
  const at: string[] = [];
  let links = 0;
  while (todo.length > 0) {
    const name = todo.shift()!;
    if (name === ".") continue;
    if (name === "..") {
      at.pop();
      continue;
    }
    const here = join(root, ...at, name);
    let target: string | undefined;
    try {
      if (lstatSync(here).isSymbolicLink()) target = readlinkSync(here);
    } catch {
      // missing: the rest is created as named
    }
    if (target === undefined) {
      at.push(name);
      continue;
    }
    if (++links > 40) throw new InstallUsageError(`${here}: too many levels of symbolic links`);
    if (target.startsWith("/")) at.length = 0;
    todo.unshift(...target.split("/").filter(Boolean));
  }
  return join(root, ...at);
}

function hashOf(file: string): string | null {
  try {
    return sha256(readFileSync(file));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw e;
  }
}

function errnoText(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  const what: Record<string, string> = {
    EACCES: "permission denied",
    EPERM: "operation not permitted",
    EROFS: "read-only file system",
    ENOSPC: "no space left on device",
    ENOTDIR: "not a directory",
  };
  return (err.code && what[err.code]) || err.message;
}

/** The release tree to install from: this bundle's own (an unpacked release), or one staged from the checkout. */
function releaseSource(): { dir: string; cleanup?: () => void } {
  const here = typeof __dirname === "string" ? __dirname : dirname(fileURLToPath(import.meta.url));
  const top = dirname(here);
  if (existsSync(join(top, "RELEASE.json"))) return { dir: top };
  const script = join(top, "scripts", "release.mjs");
  if (!existsSync(script))
    throw new InstallUsageError(`no release beside ${here} (RELEASE.json) and no checkout to make one from`);
  const staging = mkdtempSync(join(tmpdir(), "berth-release-"));
  const dir = join(staging, "tree");
  try {
    execFileSync(process.execPath, [script, "--stage", dir], { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  } catch (e) {
    rmSync(staging, { recursive: true, force: true });
    const stderr = String((e as { stderr?: unknown }).stderr ?? "").trim();
    throw new Error(`staging the release from the checkout failed: ${stderr.split("\n").pop() || (e as Error).message}`);
  }
  return { dir, cleanup: () => rmSync(staging, { recursive: true, force: true }) };
}

interface Release {
  version: string;
  nodeMajor?: number;
  nodeModules?: string;
  files: Record<string, string>;
}

/**
 * A release file as shipped: an installed tree (a prefix) holds the command line and the
 * launchers with the install's paths written in; without them it is a release tree again, so
 * `berth install` also runs from an installed prefix (to change the network, say).
 */
function pristine(rel: string, data: Buffer): Buffer {
  if (rel === "bin/berth") return Buffer.from(data.toString("utf8").replace(/^NODE='[^'\n]*'$/m, "NODE=node"));
  if (rel.startsWith("cni/")) {
    const marker = Buffer.from(`${LAUNCHER_MARKER}\0`);
    const at = data.indexOf(marker);
    if (at >= 0 && at + LAUNCHER_AREA <= data.length) {
      const out = Buffer.from(data);
      out.fill(0, at + marker.length, at + LAUNCHER_AREA);
      return out;
    }
  }
  return data;
}

/** Node's version and ABI (NODE_MODULE_VERSION) of the binary at file (on disk), or null when it does not run here. */
function nodeVersionOf(file: string): { version: string; modules: string } | null {
  if (file === process.execPath) return { version: process.versions.node, modules: process.versions.modules };
  try {
    const out = execFileSync(file, ["-p", "process.versions.node + ' ' + process.versions.modules"], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 20_000,
      env: {},
    }).trim();
    const [version = "", modules = ""] = out.split(" ");
    return { version, modules };
  } catch {
    return null;
  }
}

function readRelease(dir: string, o: InstallOptions): Release {
  const release = JSON.parse(readFileSync(join(dir, "RELEASE.json"), "utf8")) as Release;
  // The recorded Node is the one every plugin and the service will run: it must load the addons.
  // Under a root without that Node yet, the running one (the default) is the best guess.
  const node = o.copyNode
    ? nodeVersionOf(process.execPath)
    : (nodeVersionOf(under(o.root, o.node)) ?? (o.node === process.execPath ? nodeVersionOf(process.execPath) : null));
  if (node && release.nodeModules !== undefined && release.nodeModules !== node.modules)
    throw new InstallUsageError(
      `this release's addons are built for Node ${release.nodeMajor}.x (ABI ${release.nodeModules}); ` +
        `${o.node} is Node ${node.version} (ABI ${node.modules}): install with a Node ${release.nodeMajor}.x (--node)`,
    );
  for (const [rel, hash] of Object.entries(release.files)) {
    let h: string | null = null;
    try {
      h = sha256(pristine(rel, readFileSync(join(dir, rel))));
    } catch {
      // missing
    }
    if (h !== hash)
      throw new InstallUsageError(`the release is damaged: ${join(dir, rel)} ${h ? "differs from RELEASE.json" : "is missing"}`);
  }
  return release;
}

/** A copy of the launcher that runs `node` on the bundles in bundleDir (launcher.c, berth_install_paths). */
export function patchLauncher(launcher: Buffer, node: string, bundleDir: string, name = "launcher"): Buffer {
  const marker = Buffer.from(`${LAUNCHER_MARKER}\0`);
  const at = launcher.indexOf(marker);
  if (at < 0 || launcher.indexOf(marker, at + 1) >= 0) throw new Error(`${name} is not a berth launcher (no install-paths area)`);
  const paths = Buffer.from(`${node}\0${bundleDir}\0`);
  if (marker.length + paths.length > LAUNCHER_AREA)
    throw new InstallUsageError(`paths too long for the launcher: ${node}, ${bundleDir}`);
  const out = Buffer.from(launcher);
  out.fill(0, at + marker.length, at + LAUNCHER_AREA);
  paths.copy(out, at + marker.length);
  return out;
}

function networkConfig(release: string, o: InstallOptions): Buffer | null {
  if (o.network === "none") return null;
  const conf = JSON.parse(readFileSync(join(release, "examples", `10-berth-${o.network}.conflist`), "utf8"));
  if (o.subnet) {
    const ipam = conf.plugins[0].ipam;
    ipam.ranges = [[{ subnet: o.subnet }]];
    ipam.routes = [{ dst: familyOf(o.subnet) === 6 ? "::/0" : "0.0.0.0/0" }];
  }
  return Buffer.from(`${JSON.stringify(conf, null, 2)}\n`);
}

function plan(release: string, files: string[], o: InstallOptions): Planned[] {
  const node = o.node;
  if (/['\n\0]/.test(node)) throw new InstallUsageError(`cannot record the Node path ${JSON.stringify(node)}`);
  const bundleDir = join(o.prefix, "cni-node");
  const out: Planned[] = [];
  for (const rel of files) {
    const src = join(release, rel);
    let data = pristine(rel, readFileSync(src));
    const mode = statSync(src).mode & 0o777;
    if (rel === "bin/berth") data = Buffer.from(data.toString("utf8").replace(/^NODE=node$/m, `NODE='${node}'`));
    const isLauncher = rel.startsWith("cni/");
    if (isLauncher) {
      data = patchLauncher(data, node, bundleDir, src);
      out.push({ path: join(o.cniBinDir, basename(rel)), data, mode: 0o755, kind: "exec" });
    }
    out.push({ path: join(o.prefix, rel), data, mode, kind: mode & 0o111 ? "exec" : "file" });
  }
  if (o.copyNode) out.push({ path: o.node, data: readFileSync(process.execPath), mode: 0o755, kind: "exec" });
  const conf = networkConfig(release, o);
  if (conf) out.push({ path: join(o.cniConfDir, CONFLIST), data: conf, mode: 0o644, kind: "config" });
  if (o.systemdDir !== null) {
    for (const unit of files.filter((f) => f.startsWith("systemd/"))) {
      const text = readFileSync(join(release, unit), "utf8").split(SHIPPED_PREFIX).join(o.prefix);
      out.push({ path: join(o.systemdDir, basename(unit)), data: Buffer.from(text), mode: 0o644, kind: "config" });
    }
    out.push({ path: ENV_FILE, data: readFileSync(join(release, "examples", "berth.env")), mode: 0o644, kind: "config" });
  }
  return out;
}

function readManifest(o: InstallOptions): Manifest | null {
  const file = under(o.root, join(o.prefix, MANIFEST));
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw new InstallUsageError(`cannot read ${file}: ${errnoText(e)}`);
  }
  try {
    const m = JSON.parse(text) as Manifest;
    if (!Array.isArray(m.files) || !Array.isArray(m.dirs)) throw new Error("no file list");
    return m;
  } catch (e) {
    throw new InstallUsageError(`${file} is not a berth manifest (${(e as Error).message})`);
  }
}

/** Checks that dir (a path on disk) is, or can be made as, a writable directory. flag names it in the error. */
function checkWritableDir(dir: string, shown: string, flag?: string): void {
  let p = dir;
  for (;;) {
    let st: ReturnType<typeof lstatSync> | undefined;
    try {
      st = statSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOTDIR")
        throw new InstallUsageError(`${flag ? `${flag} ` : ""}${shown} is not a directory (a file is in its path)`);
      if (code !== "ENOENT") throw new InstallUsageError(`cannot use ${shown}: ${errnoText(e)}`);
    }
    if (st) {
      if (!st.isDirectory())
        throw new InstallUsageError(`${flag ? `${flag} ` : ""}${shown}${p === dir ? "" : ` (${p})`} is not a directory`);
      try {
        accessSync(p, constants.W_OK | constants.X_OK);
      } catch (e) {
        throw new InstallUsageError(`cannot write to ${p}: ${errnoText(e)}`);
      }
      return;
    }
    p = dirname(p);
  }
}

/** Directories above file (on disk) that do not exist yet, outermost first. */
function missingDirs(file: string): string[] {
  const out: string[] = [];
  for (let d = dirname(file); !existsSync(d); d = dirname(d)) out.unshift(d);
  return out;
}

/** Writes data to file through a temporary file in the same directory, fsync and rename. */
function writeAtomically(file: string, data: Buffer, mode: number): void {
  const tmp = join(dirname(file), `.${basename(file)}.berth-${process.pid}`);
  const fd = openSync(tmp, "wx", mode);
  try {
    for (let off = 0; off < data.length; ) off += writeSync(fd, data, off, data.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  try {
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // best effort: the rename is done
  }
}

/** The pre-wrapped twin boot.cjs looks for beside a bundle, named by the bundle's identity (scripts/bundle.mjs). */
function twinOf(bundleOnDisk: string, bundlePath: string): Planned {
  const st = statSync(bundleOnDisk);
  const text = readFileSync(bundleOnDisk, "utf8");
  return {
    path: `${bundlePath}.${st.ino}-${st.size}-${Math.floor(st.mtimeMs)}.wrapped.js`,
    data: Buffer.from(Module.wrap(text.replace(/^#!.*/, ""))),
    mode: 0o644,
    kind: "file",
  };
}

function sameManifest(a: Manifest | null, b: Manifest): boolean {
  return a !== null && JSON.stringify(a) === JSON.stringify(b);
}

export function runInstall(argv: string[], out = (t: string) => process.stdout.write(t)): number {
  const parsed = parseArgs("install", argv);
  if (parsed === "help") {
    out(USAGE);
    return 0;
  }
  const o = parsed;
  checkRoot(o);
  if (o.root === "/" && o.node !== process.execPath && !o.copyNode) checkNode(o);
  const source = releaseSource();
  try {
    const release = readRelease(source.dir, o);
    const files = [...Object.keys(release.files), "RELEASE.json"];
    return install(source.dir, release, files, o, out);
  } finally {
    source.cleanup?.();
  }
}

/** The recorded Node must be an executable file on the target. */
function checkNode(o: InstallOptions): boolean {
  try {
    const st = statSync(under(o.root, o.node));
    if (st.isFile() && st.mode & 0o111) return true;
  } catch {
    // missing
  }
  if (o.root === "/") throw new InstallUsageError(`--node ${o.node} is not an executable file`);
  return false;
}

function checkRoot(o: InstallOptions): void {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(o.root);
  } catch (e) {
    throw new InstallUsageError(`--root ${o.root}: ${errnoText(e)}`);
  }
  if (!st.isDirectory()) throw new InstallUsageError(`--root ${o.root} is not a directory`);
}

function install(releaseDir: string, release: Release, files: string[], o: InstallOptions, out: (t: string) => void): number {
  const old = readManifest(o);
  const oldByPath = new Map((old?.files ?? []).map((f) => [f.path, f]));
  const wanted = plan(releaseDir, files, o);
  const disk = (p: string) => under(o.root, p);

  // Directories first: the flag's own directory gets the flag's name in the error.
  checkWritableDir(disk(o.cniBinDir), o.cniBinDir, "--cni-bin-dir");
  checkWritableDir(disk(o.prefix), o.prefix, "--prefix");
  if (o.network !== "none") checkWritableDir(disk(o.cniConfDir), o.cniConfDir, "--cni-conf-dir");
  if (o.systemdDir !== null) {
    checkWritableDir(disk(o.systemdDir), o.systemdDir, "--systemd-dir");
    checkWritableDir(disk(dirname(ENV_FILE)), dirname(ENV_FILE));
  }
  for (const d of new Set(wanted.map((w) => dirname(w.path)))) checkWritableDir(disk(d), d);

  type Action = { p: Planned; action: "write" | "same" | "edited" };
  const actions: Action[] = [];
  const conflicts: string[] = [];
  for (const p of wanted) {
    const file = disk(p.path);
    let st: ReturnType<typeof lstatSync> | undefined;
    try {
      st = lstatSync(file);
    } catch {
      st = undefined;
    }
    if (st?.isDirectory()) throw new InstallUsageError(`${file} exists and is a directory`);
    if (st && !st.isFile() && !o.force)
      throw new InstallUsageError(`${file} exists and is not a regular file (a link?): use --force to replace it`);
    const cur = st?.isFile() ? hashOf(file) : null;
    const want = sha256(p.data);
    const mine = oldByPath.get(p.path);
    if (cur === want) actions.push({ p, action: "same" });
    else if (st === undefined) actions.push({ p, action: "write" });
    else if (mine && mine.sha256 === cur) actions.push({ p, action: "write" });
    else if (mine && p.kind === "config" && !o.force) actions.push({ p, action: "edited" });
    else if (mine || o.force) actions.push({ p, action: "write" });
    else conflicts.push(file);
  }
  if (conflicts.length > 0) {
    const more = conflicts.length > 1 ? ` (and ${conflicts.length - 1} more)` : "";
    // An install with another --prefix has its own manifest: its files are foreign here.
    throw new InstallUsageError(
      `${conflicts[0]} exists and was not written by berth install${old ? "" : ` (with --prefix ${o.prefix})`}${more}: use --force to replace it`,
    );
  }

  const wantedPaths = new Set(wanted.map((w) => w.path));
  const bundles = wanted.filter(
    (w) => w.path.startsWith(join(o.prefix, "cni-node")) && w.path.endsWith(".cjs") && !w.path.endsWith("boot.cjs"),
  );
  const isTwin = (p: string) => p.endsWith(".wrapped.js") && p.startsWith(join(o.prefix, "cni-node/"));

  if (o.dryRun) {
    for (const a of actions) {
      const verb = a.action === "write" ? "write" : a.action === "same" ? "unchanged" : "keep (edited since install)";
      out(`${verb.padEnd(10)} ${disk(a.p.path)}\n`);
    }
    for (const b of bundles) {
      const act = actions.find((a) => a.p === b)!;
      const twin = act.action === "same" ? twinOf(disk(b.path), b.path).path : `${b.path}.<identity>.wrapped.js`;
      const known = act.action === "same" && oldByPath.has(twin) && hashOf(disk(twin)) !== null;
      out(`${(known ? "unchanged" : "write").padEnd(10)} ${disk(twin)}\n`);
    }
    for (const f of old?.files ?? []) {
      if (wantedPaths.has(f.path) || isTwin(f.path)) continue;
      out(`${"remove".padEnd(10)} ${disk(f.path)}\n`);
    }
    const manifestVerb = old && actions.every((a) => a.action !== "write") ? "unchanged" : "write";
    out(`${manifestVerb.padEnd(10)} ${disk(join(o.prefix, MANIFEST))}\n`);
    return 0;
  }

  // Writes, undoable until the manifest is in place: replaced files are kept as hard links.
  const created: string[] = [];
  const createdDirs: string[] = [];
  const backups: [string, string][] = [];
  const undo = () => {
    for (const f of created.reverse()) rmSync(f, { force: true });
    for (const [file, backup] of backups.reverse()) {
      try {
        renameSync(backup, file);
      } catch {
        // leave the backup for the administrator
      }
    }
    for (const d of createdDirs.reverse()) {
      try {
        rmdirSync(d);
      } catch {
        // not empty
      }
    }
  };
  const put = (p: Planned) => {
    const file = disk(p.path);
    for (const d of missingDirs(file)) {
      mkdirSync(d, { mode: 0o755 });
      createdDirs.push(d);
    }
    if (existsSync(file)) {
      const backup = join(dirname(file), `.${basename(file)}.berth-old-${process.pid}`);
      rmSync(backup, { force: true });
      linkSync(file, backup);
      backups.push([file, backup]);
    } else created.push(file);
    writeAtomically(file, p.data, p.mode);
  };
  const entries: ManifestEntry[] = [];
  let written = 0;
  let kept = 0;
  const keptEdited: string[] = [];
  const removed: string[] = [];
  const leftChanged: string[] = [];
  try {
    for (const a of actions) {
      if (a.action === "write") {
        put(a.p);
        written++;
        entries.push({ path: a.p.path, sha256: sha256(a.p.data), kind: a.p.kind });
      } else if (a.action === "same") {
        kept++;
        entries.push({ path: a.p.path, sha256: sha256(a.p.data), kind: a.p.kind });
      } else {
        keptEdited.push(disk(a.p.path));
        entries.push(oldByPath.get(a.p.path)!);
      }
    }
    for (const b of bundles) {
      const twin = twinOf(disk(b.path), b.path);
      if (hashOf(disk(twin.path)) !== sha256(twin.data)) {
        put(twin);
        written++;
      } else kept++;
      entries.push({ path: twin.path, sha256: sha256(twin.data), kind: twin.kind });
    }
    const nowPaths = new Set(entries.map((e) => e.path));
    for (const f of old?.files ?? []) {
      if (nowPaths.has(f.path)) continue;
      const cur = hashOf(disk(f.path));
      if (cur === null) continue;
      if (cur !== f.sha256 && !o.force) {
        leftChanged.push(disk(f.path));
        continue;
      }
      removed.push(disk(f.path));
    }
    const dirs = [
      ...new Set([...(old?.dirs ?? []), ...createdDirs.map((d) => (o.root === "/" ? d : d.slice(o.root.length)))]),
    ].sort();
    const manifest: Manifest = {
      berth: release.version,
      node: o.node,
      prefix: o.prefix,
      cniBinDir: o.cniBinDir,
      cniConfDir: o.cniConfDir,
      network: o.network,
      systemdDir: o.systemdDir,
      dirs,
      files: entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)),
    };
    if (!sameManifest(old, manifest))
      put({
        path: join(o.prefix, MANIFEST),
        data: Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`),
        mode: 0o644,
        kind: "file",
      });
  } catch (e) {
    undo();
    throw new Error(`install failed, nothing changed: ${errnoText(e)}`);
  }
  // Committed: the backups go, then the files the new release no longer has, and the V8 code
  // caches the cold path wrote for bundles just replaced (named by the old identity, never read again).
  for (const [, backup] of backups) rmSync(backup, { force: true });
  for (const f of removed) rmSync(f, { force: true });
  const replacedBundles = actions.filter((a) => a.action === "write" && bundles.includes(a.p)).map((a) => basename(a.p.path));
  const cacheDir = disk(join(o.prefix, "cni-node"));
  for (const f of existsSync(cacheDir) ? readdirSync(cacheDir) : []) {
    if (f.endsWith(".v8cache") && replacedBundles.some((b) => f.startsWith(`${b}.`))) rmSync(join(cacheDir, f), { force: true });
  }
  for (const d of new Set([...backups.map(([f]) => dirname(f)), ...created.map((f) => dirname(f))])) fsyncDir(d);

  if (o.root !== "/" && !checkNode(o))
    out(
      `berth install: note: ${o.node} is not under ${o.root} yet; the plugins' cold path and the service run it (--node names another)\n`,
    );
  for (const f of keptEdited) out(`berth install: kept ${f}: changed since berth installed it (--force replaces it)\n`);
  for (const f of leftChanged) out(`berth install: left ${f} in place: changed since berth installed it\n`);
  out(
    `berth install: berth ${release.version} under ${disk(o.prefix)}, plugins in ${disk(o.cniBinDir)}: ` +
      `${written} written, ${kept} unchanged${removed.length ? `, ${removed.length} removed` : ""}\n`,
  );
  if (written > 0 && o.systemdDir !== null && o.root === "/")
    out(
      "berth install: to start it: systemctl daemon-reload && systemctl enable --now berth-cni.socket berth-csi.socket berth.service\n",
    );
  return 0;
}

export function runUninstall(argv: string[], out = (t: string) => process.stdout.write(t)): number {
  const parsed = parseArgs("uninstall", argv);
  if (parsed === "help") {
    out(USAGE);
    return 0;
  }
  const o = parsed;
  checkRoot(o);
  const disk = (p: string) => under(o.root, p);
  const manifest = readManifest(o);
  const state = disk(STATE_DIR);
  if (manifest === null) {
    out(`berth uninstall: nothing installed under ${disk(o.prefix)} (no ${MANIFEST})\n`);
    if (o.purge && existsSync(state)) {
      refuseMountsUnder(state);
      if (o.dryRun) out(`${"remove".padEnd(10)} ${state}/\n`);
      else purgeState(state);
    }
    return 0;
  }
  const present = manifest.files.filter((f) => hashOf(disk(f.path)) !== null);
  const changed = present.filter((f) => hashOf(disk(f.path)) !== f.sha256);
  if (changed.length > 0 && !o.force) {
    const more = changed.length > 1 ? ` (and ${changed.length - 1} more)` : "";
    throw new InstallUsageError(
      `${disk(changed[0]!.path)} was changed since berth installed it${more}: use --force to remove it anyway`,
    );
  }
  const cacheDir = disk(join(manifest.prefix, "cni-node"));
  const caches = existsSync(cacheDir)
    ? readdirSync(cacheDir)
        .filter((f) => f.endsWith(".v8cache"))
        .map((f) => join(cacheDir, f))
    : [];
  const manifestFile = disk(join(manifest.prefix, MANIFEST));
  const toRemove = [...present.map((f) => disk(f.path)), ...caches, manifestFile];
  for (const d of new Set(toRemove.map((f) => dirname(f)))) checkWritableDir(d, d);
  if (o.purge && existsSync(state)) {
    checkWritableDir(dirname(state), dirname(state));
    refuseMountsUnder(state);
  }
  if (o.dryRun) {
    for (const f of toRemove) out(`${"remove".padEnd(10)} ${f}\n`);
    if (o.purge && existsSync(state)) out(`${"remove".padEnd(10)} ${state}/\n`);
    return 0;
  }
  for (const f of toRemove) {
    try {
      unlinkSync(f);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new Error(`uninstall stopped at ${f}: ${errnoText(e)}`);
    }
  }
  for (const d of [...manifest.dirs].sort().reverse()) {
    try {
      rmdirSync(disk(d));
    } catch {
      // not empty (someone else's files) or gone
    }
  }
  if (o.purge) purgeState(state);
  out(
    `berth uninstall: removed ${present.length} files installed by berth ${manifest.berth}` +
      `${o.purge ? ` and ${state}` : ` (kept ${state}; --purge deletes it)`}\n`,
  );
  return 0;
}

/** Deletes the state directory, or only its contents when it is a mount point (rmdir would be EBUSY). */
function purgeState(state: string): void {
  if (!existsSync(state)) return;
  const real = realpathSync(state);
  if (!readMountInfo().some((m) => m.mountPoint === real)) {
    rmSync(state, { recursive: true, force: true });
    return;
  }
  for (const e of readdirSync(state)) rmSync(join(state, e), { recursive: true, force: true });
}

/**
 * --purge deletes the state directory; a volume still mounted under it (a block volume's
 * filesystem, a bind mount) would have its contents deleted through the mount. The directory
 * itself may be a mount point (a Kubernetes hostPath volume in the uninstall Job, a filesystem
 * of its own): that one is berth's state, emptied by purgeState.
 */
function refuseMountsUnder(dir: string): void {
  const real = realpathSync(dir);
  const inside = readMountInfo().filter((m) => m.mountPoint.startsWith(`${real}/`));
  if (inside.length > 0)
    throw new InstallUsageError(
      `--purge: ${inside[0]!.mountPoint} is mounted under ${dir}${inside.length > 1 ? ` (and ${inside.length - 1} more)` : ""}: unmount the volumes first`,
    );
}

/** The CLI's entry: usage errors are one line and exit code 2. */
export function runInstallCommand(command: "install" | "uninstall", argv: string[]): number {
  try {
    return command === "install" ? runInstall(argv) : runUninstall(argv);
  } catch (e) {
    process.stderr.write(`berth ${command}: ${(e as Error).message}\n`);
    return e instanceof InstallUsageError ? 2 : 1;
  }
}
