// Mounts: read the mount table (/proc/self/mountinfo), bind mounts (read-only done right),
// filesystem mounts with fstab-style options, and idempotent unmount.
import { readFileSync, realpathSync } from "node:fs";
import { resolve } from "node:path";
import { addon, isSysError } from "./addon.ts";

/** One line of /proc/<pid>/mountinfo (see proc(5)), with escapes decoded. */
export interface MountInfo {
  id: number;
  parentId: number;
  /** "major:minor" of the filesystem's device (st_dev). */
  majorMinor: string;
  major: number;
  minor: number;
  /** Path inside the filesystem that is mounted here ("/" unless a bind of a subtree). */
  root: string;
  mountPoint: string;
  /** Per-mount options: rw/ro, nosuid, nodev, noexec, relatime... */
  mountOptions: string[];
  /** Propagation tags: "shared:N", "master:N", "propagate_from:N", "unbindable". */
  optionalFields: string[];
  fsType: string;
  source: string;
  /** Per-superblock options, as the filesystem reports them. */
  superOptions: string[];
}

/** A mount, unmount or mount-table failure; `code` is the errno name (EPERM, EBUSY, EROFS...). */
export class MountError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly target: string,
    readonly syscall?: string,
  ) {
    super(message);
    this.name = "MountError";
  }
}

// mount(2) flag bits (linux/mount.h).
const MS_RDONLY = 0x1;
const MS_NOSUID = 0x2;
const MS_NODEV = 0x4;
const MS_NOEXEC = 0x8;
const MS_SYNCHRONOUS = 0x10;
const MS_REMOUNT = 0x20;
const MS_DIRSYNC = 0x80;
const MS_NOSYMFOLLOW = 0x100;
const MS_NOATIME = 0x400;
const MS_NODIRATIME = 0x800;
const MS_BIND = 0x1000;
const MS_REC = 0x4000;
const MS_SILENT = 0x8000;
const MS_RELATIME = 0x200000;
const MS_STRICTATIME = 0x1000000;
const MS_LAZYTIME = 0x2000000;
const MNT_DETACH = 0x2;
const UMOUNT_NOFOLLOW = 0x8;

// statfs(2) f_flags bits that describe the per-mount flags of an existing mount.
const ST_RDONLY = 0x1;
const ST_NOSUID = 0x2;
const ST_NODEV = 0x4;
const ST_NOEXEC = 0x8;
const ST_SYNCHRONOUS = 0x10;
const ST_NOATIME = 0x400;
const ST_NODIRATIME = 0x800;
const ST_RELATIME = 0x1000;
const ST_NOSYMFOLLOW = 0x2000;

/** Option words that are mount(2) flags rather than filesystem data; `false` clears the flag. */
const FLAG_OPTIONS: Record<string, [number, boolean]> = {
  ro: [MS_RDONLY, true],
  rw: [MS_RDONLY, false],
  nosuid: [MS_NOSUID, true],
  suid: [MS_NOSUID, false],
  nodev: [MS_NODEV, true],
  dev: [MS_NODEV, false],
  noexec: [MS_NOEXEC, true],
  exec: [MS_NOEXEC, false],
  sync: [MS_SYNCHRONOUS, true],
  async: [MS_SYNCHRONOUS, false],
  dirsync: [MS_DIRSYNC, true],
  noatime: [MS_NOATIME, true],
  atime: [MS_NOATIME, false],
  nodiratime: [MS_NODIRATIME, true],
  diratime: [MS_NODIRATIME, false],
  relatime: [MS_RELATIME, true],
  norelatime: [MS_RELATIME, false],
  strictatime: [MS_STRICTATIME, true],
  lazytime: [MS_LAZYTIME, true],
  nolazytime: [MS_LAZYTIME, false],
  nosymfollow: [MS_NOSYMFOLLOW, true],
  silent: [MS_SILENT, true],
  loud: [MS_SILENT, false],
};

/** Flags a bind mount may carry (the atime and sync ones belong to filesystem mounts). */
export type BindFlag = "nosuid" | "nodev" | "noexec" | "noatime" | "nodiratime" | "relatime" | "nosymfollow";
const BIND_FLAGS: ReadonlySet<string> = new Set<BindFlag>([
  "nosuid",
  "nodev",
  "noexec",
  "noatime",
  "nodiratime",
  "relatime",
  "nosymfollow",
]);

// mountinfo escapes space, tab, newline and backslash as \ooo.
function unescapeMountField(s: string): string {
  return s.includes("\\") ? s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8))) : s;
}

/** Parses mountinfo text; exported for tests and for /proc/<pid>/mountinfo of other namespaces. */
export function parseMountInfo(text: string): MountInfo[] {
  const mounts: MountInfo[] = [];
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const fields = line.split(" ");
    const sep = fields.indexOf("-", 6);
    const [id, parentId, majorMinor, root, mountPoint, mountOptions] = fields;
    const [fsType, source, superOptions] = fields.slice(sep + 1);
    if (sep < 0 || mountOptions === undefined || fsType === undefined || source === undefined || superOptions === undefined) {
      throw new MountError(`malformed mountinfo line: ${line}`, "EINVAL", "");
    }
    const [major = Number.NaN, minor = Number.NaN] = majorMinor?.split(":").map(Number) ?? [];
    mounts.push({
      id: Number(id),
      parentId: Number(parentId),
      majorMinor: majorMinor ?? "",
      major,
      minor,
      root: unescapeMountField(root ?? ""),
      mountPoint: unescapeMountField(mountPoint ?? ""),
      mountOptions: mountOptions.split(","),
      optionalFields: fields.slice(6, sep),
      fsType: unescapeMountField(fsType),
      source: unescapeMountField(source),
      superOptions: superOptions === "" ? [] : superOptions.split(","),
    });
  }
  return mounts;
}

/** The mount table of this process's mount namespace (or of `file`, e.g. /proc/PID/mountinfo). */
export function readMountInfo(file = "/proc/self/mountinfo"): MountInfo[] {
  return parseMountInfo(readFileSync(file, "utf8"));
}

// Mount points in mountinfo are canonical; resolve symlinks when the path exists.
function canonical(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

/** Everything mounted exactly at `path`, bottom first (the last entry is the visible one). */
export function mountsAt(path: string, table: MountInfo[] = readMountInfo()): MountInfo[] {
  const target = canonical(path);
  return table.filter((m) => m.mountPoint === target);
}

/** True when something is mounted at `path` (bind mounts of the same filesystem included). */
export function isMountPoint(path: string): boolean {
  return mountsAt(path).length > 0;
}

function mountError(e: unknown, what: string, target: string): never {
  if (isSysError(e)) {
    const hint =
      e.code === "EPERM"
        ? " (needs CAP_SYS_ADMIN in the mount namespace)"
        : e.code === "ENOENT"
          ? " (source or target does not exist)"
          : "";
    throw new MountError(`${what}: ${e.message}${hint}`, e.code, target, e.syscall);
  }
  throw e;
}

export interface BindOptions {
  readOnly?: boolean;
  /** Per-mount flags for the new mount. */
  flags?: BindFlag[];
  /** Also bind the mounts below source (MS_REC). */
  recursive?: boolean;
}

// Per-mount flags a remount must repeat so that it does not clear them by accident
// (and so it does not fail with EPERM on flags that are locked in a user namespace).
function currentMountFlags(target: string): number {
  const f = addon().statfs(target).flags;
  let flags = 0;
  if (f & ST_NOSUID) flags |= MS_NOSUID;
  if (f & ST_NODEV) flags |= MS_NODEV;
  if (f & ST_NOEXEC) flags |= MS_NOEXEC;
  if (f & ST_SYNCHRONOUS) flags |= MS_SYNCHRONOUS;
  if (f & ST_NOATIME) flags |= MS_NOATIME;
  if (f & ST_NODIRATIME) flags |= MS_NODIRATIME;
  if (f & ST_RELATIME) flags |= MS_RELATIME;
  if (f & ST_NOSYMFOLLOW) flags |= MS_NOSYMFOLLOW;
  if (f & ST_RDONLY) flags |= MS_RDONLY;
  return flags;
}

/**
 * Bind-mounts `source` (a directory, or a file/device node onto a file) at `target`.
 * The kernel ignores MS_RDONLY and per-mount flags on the bind itself, so they are
 * applied by a second MS_REMOUNT|MS_BIND; if that fails the bind is undone.
 */
export function bindMount(source: string, target: string, options: BindOptions = {}): void {
  let extra = 0;
  for (const f of options.flags ?? []) {
    const flag = BIND_FLAGS.has(f) ? FLAG_OPTIONS[f] : undefined;
    if (!flag)
      throw new MountError(`unsupported bind mount flag "${f}" (allowed: ${[...BIND_FLAGS].join(", ")})`, "EINVAL", target);
    extra |= flag[0];
  }
  if (options.readOnly) extra |= MS_RDONLY;
  const a = addon();
  try {
    a.mount(source, target, null, MS_BIND | (options.recursive ? MS_REC : 0), null);
  } catch (e) {
    mountError(e, `bind mount ${source} on ${target}`, target);
  }
  if (extra === 0) return;
  try {
    a.mount(null, target, null, MS_REMOUNT | MS_BIND | currentMountFlags(target) | extra, null);
  } catch (e) {
    try {
      a.umount2(target, MNT_DETACH);
    } catch {
      // the bind is gone already; report the remount failure
    }
    mountError(e, `remount ${target} ${options.readOnly ? "read-only" : "with flags"}`, target);
  }
}

export interface FilesystemMountOptions {
  readOnly?: boolean;
  /** fstab-style words: flags (ro, nosuid, noatime...) and filesystem data (discard, prjquota...). */
  options?: string[];
}

/** Splits fstab-style option words into mount(2) flags and the filesystem's data string. */
export function splitMountOptions(options: string[]): { flags: number; data: string } {
  let flags = 0;
  const data: string[] = [];
  for (const raw of options) {
    const word = raw.trim();
    if (word === "" || word === "defaults") continue;
    if (word === "bind" || word === "rbind" || word === "remount" || word === "move") {
      throw new MountError(`mount option "${word}" is not a filesystem option (use bindMount)`, "EINVAL", "");
    }
    const flag = FLAG_OPTIONS[word];
    if (flag) {
      flags = flag[1] ? flags | flag[0] : flags & ~flag[0];
      // strictatime replaces relatime; relatime is the kernel default otherwise.
      if (word === "strictatime") flags &= ~MS_RELATIME;
    } else {
      if (word.includes(",")) throw new MountError(`mount option "${word}" contains a comma`, "EINVAL", "");
      data.push(word);
    }
  }
  return { flags, data: data.join(",") };
}

// MOUNT_ATTR_* bits for fsmount(2): the per-mount half of the option words.
const MOUNT_ATTRS: Record<string, number> = {
  ro: 0x1,
  nosuid: 0x2,
  nodev: 0x4,
  noexec: 0x8,
  noatime: 0x10,
  strictatime: 0x20,
  relatime: 0,
  nodiratime: 0x80,
  nosymfollow: 0x200000,
};
// Words that undo a per-mount attribute, or only matter to mount(8)/printk.
const CLEARED_ATTRS: Record<string, string> = {
  rw: "ro",
  suid: "nosuid",
  dev: "nodev",
  exec: "noexec",
  atime: "noatime",
  diratime: "nodiratime",
};
const IGNORED_WORDS = new Set(["defaults", "silent", "loud", "norelatime"]);
const MOUNT_ATTR_ATIME_MASK = 0x70;

/**
 * Plans a mount through the new mount API: per-mount attributes for fsmount(2), and
 * superblock parameters for fsconfig(2) ("ro" there too, so the filesystem opens read-only).
 */
export function planFilesystemMount(options: string[]): { attrs: number; params: string[] } {
  let attrs = 0;
  const params: string[] = [];
  for (const raw of options) {
    const word = raw.trim();
    if (word === "" || IGNORED_WORDS.has(word)) continue;
    if (word === "bind" || word === "rbind" || word === "remount" || word === "move") {
      throw new MountError(`mount option "${word}" is not a filesystem option (use bindMount)`, "EINVAL", "");
    }
    const attr = MOUNT_ATTRS[word];
    const cleared = CLEARED_ATTRS[word];
    if (attr !== undefined) {
      if (word === "noatime" || word === "strictatime" || word === "relatime") attrs &= ~MOUNT_ATTR_ATIME_MASK;
      attrs |= attr;
    } else if (cleared !== undefined) {
      attrs &= ~(MOUNT_ATTRS[cleared] ?? 0);
    } else if (word.includes(",")) {
      throw new MountError(`mount option "${word}" contains a comma`, "EINVAL", "");
    } else {
      params.push(word);
    }
  }
  if (attrs & 0x1) params.push("ro");
  return { attrs, params };
}

function withTarget(e: unknown, target: string): unknown {
  return e instanceof MountError ? new MountError(e.message, e.code, target) : e;
}

/**
 * Mounts the filesystem on `device` (a block device, or a source like "tmpfs") at `target`.
 * Uses fsopen/fsconfig/fsmount so a failure says what the kernel objected to (for example
 * `ext4: Unknown parameter 'bogus'`); falls back to mount(2) on kernels before 5.2.
 */
export function mountFilesystem(device: string, target: string, fsType: string, options: FilesystemMountOptions = {}): void {
  if (!/^[a-z0-9._-]+$/i.test(fsType)) throw new MountError(`invalid filesystem type "${fsType}"`, "EINVAL", target);
  const words = [...(options.options ?? []), ...(options.readOnly ? ["ro"] : [])];
  let plan: { attrs: number; params: string[] };
  try {
    plan = planFilesystemMount(words);
  } catch (e) {
    throw withTarget(e, target);
  }
  const what = `mount ${device} (${fsType}) on ${target}`;
  try {
    addon().mountFs(device, target, fsType, plan.attrs, plan.params);
    return;
  } catch (e) {
    if (!isSysError(e) || e.code !== "ENOSYS" || e.syscall !== "fsopen") {
      if (isSysError(e)) {
        const { detail, step } = e as { detail?: string; step?: string };
        const why =
          detail ??
          (e.code === "EINVAL"
            ? `invalid argument at ${step}: wrong filesystem type, bad option or bad superblock; see dmesg`
            : e.message);
        throw new MountError(`${what}: ${why}`, e.code, target, e.syscall);
      }
      throw e;
    }
  }
  legacyMount(device, target, fsType, words, what);
}

// mount(2) for kernels without the new mount API.
function legacyMount(device: string, target: string, fsType: string, words: string[], what: string): void {
  let split: { flags: number; data: string };
  try {
    split = splitMountOptions(words);
  } catch (e) {
    throw withTarget(e, target);
  }
  try {
    addon().mount(device, target, fsType, split.flags, split.data === "" ? null : split.data);
  } catch (e) {
    if (isSysError(e, "EINVAL")) {
      throw new MountError(
        `${what}: invalid argument — wrong filesystem type, bad option (${split.data || "none"}) or bad superblock; see dmesg`,
        "EINVAL",
        target,
        "mount",
      );
    }
    mountError(e, what, target);
  }
}

export interface UnmountOptions {
  /** Lazy unmount (MNT_DETACH): detach now, clean up when the last user goes. */
  detach?: boolean;
  /** Do not follow a symlink at `target` (UMOUNT_NOFOLLOW): a symlink there is not a mount of ours. */
  noFollow?: boolean;
}

/**
 * Unmounts the topmost mount at `target`. Returns false when nothing is mounted there
 * (EINVAL) or the path does not exist (ENOENT), so callers can repeat it safely.
 */
export function unmount(target: string, options: UnmountOptions = {}): boolean {
  try {
    addon().umount2(target, (options.detach ? MNT_DETACH : 0) | (options.noFollow ? UMOUNT_NOFOLLOW : 0));
    return true;
  } catch (e) {
    if (isSysError(e, "EINVAL") || isSysError(e, "ENOENT")) return false;
    if (isSysError(e, "EBUSY"))
      throw new MountError(
        `unmount ${target}: busy (open files or mounts below it); retry or use detach`,
        "EBUSY",
        target,
        "umount2",
      );
    mountError(e, `unmount ${target}`, target);
  }
}

// Propagation types for an existing mount (mount(2) with only one of these bits).
const MS_UNBINDABLE = 0x20000;
const MS_PRIVATE = 0x40000;
const MS_SLAVE = 0x80000;
const MS_SHARED = 0x100000;
const PROPAGATION: Record<Propagation, number> = {
  shared: MS_SHARED,
  slave: MS_SLAVE,
  private: MS_PRIVATE,
  unbindable: MS_UNBINDABLE,
};

export type Propagation = "shared" | "slave" | "private" | "unbindable";

/**
 * Sets the propagation type of the mount at `target` (`mount --make-[r]shared` and the
 * others); with `recursive`, of every mount below it too. `target` must be a mount point.
 */
export function setPropagation(target: string, type: Propagation, options: { recursive?: boolean } = {}): void {
  try {
    addon().mount(null, target, null, PROPAGATION[type] | (options.recursive ? MS_REC : 0), null);
  } catch (e) {
    mountError(e, `make ${target} ${options.recursive ? "r" : ""}${type}`, target);
  }
}
