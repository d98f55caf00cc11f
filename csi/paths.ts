// Paths the driver is asked to mount on (staging and target paths) and the directories it
// creates. A path is vetted before anything about it is recorded: absolute, within the
// kernel's PATH_MAX/NAME_MAX, no symlink on the way, and not on a kernel pseudo filesystem
// (/proc, /sys, /dev, cgroup, debugfs...), where mkdir and mount either fail oddly or do harm.
// Directories are created one component at a time, a bounded number of them: Node's recursive
// mkdir spins forever on some of those filesystems (it loops on ENOENT/EEXIST under /proc).
import { lstatSync, mkdirSync, realpathSync, type Stats, statSync } from "node:fs";
import { dirname } from "node:path";
import { statFs } from "../native/fs.ts";
import { readMountInfo } from "../native/mount.ts";
import { invalidArgument } from "./errors.ts";
import { byteLength, requirePath } from "./validate.ts";

/** Longest path the kernel takes, without its terminating NUL (PATH_MAX - 1). */
export const MAX_PATH_BYTES = 4095;
/** Longest single component (NAME_MAX). */
export const MAX_NAME_BYTES = 255;
/** How many missing directories one call may create. */
export const MAX_NEW_DIRECTORIES = 32;

/** Filesystem types (as mountinfo names them) that are kernel interfaces, not storage. */
const PSEUDO_FS_TYPES = new Set([
  "proc",
  "sysfs",
  "devtmpfs",
  "devpts",
  "cgroup",
  "cgroup2",
  "debugfs",
  "tracefs",
  "securityfs",
  "configfs",
  "bpf",
  "pstore",
  "efivarfs",
  "fusectl",
  "mqueue",
  "hugetlbfs",
  "binfmt_misc",
  "autofs",
  "nsfs",
  "rpc_pipefs",
  "selinuxfs",
  "smackfs",
]);

/** statfs f_type magics of the same filesystems (devtmpfs reports tmpfs's, so mountinfo decides it). */
const PSEUDO_FS_MAGICS = new Map<number, string>([
  [0x9fa0, "proc"],
  [0x62656572, "sysfs"],
  [0x1cd1, "devpts"],
  [0x27e0eb, "cgroup"],
  [0x63677270, "cgroup2"],
  [0x64626720, "debugfs"],
  [0x74726163, "tracefs"],
  [0x73636673, "securityfs"],
  [0x62656570, "configfs"],
  [0xcafe4a11, "bpf"],
  [0x6165676c, "pstore"],
  [0xde5e81e4, "efivarfs"],
  [0x65735543, "fusectl"],
  [0x19800202, "mqueue"],
  [0x958458f6, "hugetlbfs"],
  [0x42494e4d, "binfmt_misc"],
  [0x0187, "autofs"],
  [0x6e736673, "nsfs"],
  [0x67596969, "rpc_pipefs"],
  [0xf97cff8c, "selinuxfs"],
  [0x43415d53, "smackfs"],
]);

/** Where Linux puts its kernel interfaces; refused by name too (a container's /dev is often a plain tmpfs). */
const KERNEL_TREES = ["/proc", "/sys", "/dev"];

function under(path: string, dir: string): boolean {
  return path === dir || path.startsWith(`${dir}/`);
}

/** The kernel tree (/proc, /sys, /dev) `path` names, if any. */
function kernelTreeOf(path: string): string | undefined {
  return KERNEL_TREES.find((t) => under(path, t));
}

/**
 * The kernel pseudo filesystem `realPath` (canonical, existing) lives on, or undefined when it
 * is ordinary storage. Reads the mount table and statfs; both are single bounded calls.
 */
export function pseudoFilesystemOf(realPath: string): string | undefined {
  const tree = kernelTreeOf(realPath);
  if (tree) return tree.slice(1);
  let best: { mountPoint: string; fsType: string } | undefined;
  for (const m of readMountInfo()) {
    if (!under(realPath, m.mountPoint) && m.mountPoint !== "/") continue;
    // The deepest mount point wins; at the same mount point, the later (upper) mount.
    if (!best || m.mountPoint.length >= best.mountPoint.length) best = m;
  }
  if (best && PSEUDO_FS_TYPES.has(best.fsType)) return best.fsType;
  return PSEUDO_FS_MAGICS.get(statFs(realPath).type);
}

export interface VettedPath {
  /** The path as given, normalised (no trailing or doubled slashes). */
  path: string;
  /** The deepest component of it that exists (the path itself when it exists). */
  existing: string;
  /** How many components below `existing` are missing. */
  missing: number;
}

export interface VetOptions {
  /** The parent directory must exist (the CO creates it for target paths). */
  parentMustExist?: boolean;
}

/**
 * Checks a staging or target path before anything about it is recorded; every failure is
 * INVALID_ARGUMENT naming `field`. Only lstat, realpath, statfs and one read of the mount
 * table are used, so it answers quickly whatever the path points at.
 */
export function vetNodePath(field: string, value: string, options: VetOptions = {}): VettedPath {
  const path = requirePath(field, value);
  if (byteLength(path) > MAX_PATH_BYTES) throw invalidArgument(`${field} is longer than ${MAX_PATH_BYTES} bytes`);
  const components = path.split("/").filter((c) => c !== "");
  if (components.length === 0) throw invalidArgument(`${field} must not be the root directory`);
  const long = components.find((c) => byteLength(c) > MAX_NAME_BYTES);
  if (long !== undefined)
    throw invalidArgument(`${field} has a component longer than ${MAX_NAME_BYTES} bytes (${long.slice(0, 32)}...)`);

  // The deepest existing component, found from the path up (one lstat per component).
  let existing = path;
  let missing = 0;
  let st: Stats | undefined;
  while (!st) {
    try {
      st = lstatSync(existing);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? "EIO";
      if (code === "ENOTDIR") throw invalidArgument(`${field}: a component of ${existing} is not a directory`);
      if (code !== "ENOENT" || existing === "/") throw invalidArgument(`${field}: cannot examine ${existing}: ${code}`);
      existing = dirname(existing);
      missing++;
    }
  }
  if (st.isSymbolicLink()) throw invalidArgument(`${field}: ${existing} is a symlink`);
  if (missing > 0 && !st.isDirectory()) throw invalidArgument(`${field}: ${existing} is not a directory`);
  if (options.parentMustExist && missing > 1) throw invalidArgument(`${field}: parent directory ${dirname(path)} does not exist`);

  const tree = kernelTreeOf(path);
  if (tree) throw invalidArgument(`${field}: ${path} is in ${tree}, the kernel's own tree; volumes cannot be mounted there`);
  // What the path lives on: its parent when the path exists (it may be a mount point itself,
  // one of ours when the call is repeated), else its deepest existing ancestor.
  const anchor = missing === 0 ? dirname(path) : existing;
  let real: string;
  try {
    real = realpathSync(anchor);
  } catch (e) {
    throw invalidArgument(`${field}: cannot resolve ${anchor}: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
  let pseudo: string | undefined;
  try {
    pseudo = pseudoFilesystemOf(real);
  } catch (e) {
    throw invalidArgument(`${field}: cannot examine the filesystem of ${real}: ${(e as Error).message}`);
  }
  if (pseudo) {
    const via = real === anchor ? "" : ` (${anchor} resolves to ${real})`;
    throw invalidArgument(`${field}: ${path} is on the kernel's ${pseudo} filesystem${via}; volumes cannot be mounted there`);
  }
  if (real !== anchor) throw invalidArgument(`${field}: ${anchor} resolves through a symlink to ${real}`);
  if (missing > MAX_NEW_DIRECTORIES)
    throw invalidArgument(`${field}: ${missing} missing directories above it (at most ${MAX_NEW_DIRECTORIES} are created)`);
  return { path, existing, missing };
}

/** A directory could not be created; `code` is the errno name. */
export class DirectoryError extends Error {
  override name = "DirectoryError";
  constructor(
    message: string,
    readonly code: string,
    readonly path: string,
  ) {
    super(message);
  }
}

/**
 * Creates `path` and the missing directories above it, one mkdir(2) per component and at
 * most `maxNew` of them; an existing directory is fine (symlinks above it are followed).
 * Every failure is a DirectoryError naming the directory and the errno, never a retry.
 */
export function makeDirectories(path: string, mode = 0o750, maxNew = MAX_NEW_DIRECTORIES): void {
  if (!path.startsWith("/")) throw new DirectoryError(`cannot create ${path}: not an absolute path`, "EINVAL", path);
  const todo: string[] = [];
  for (let p = path; ; p = dirname(p)) {
    try {
      if (!statSync(p).isDirectory()) throw new DirectoryError(`cannot create ${path}: ${p} is not a directory`, "ENOTDIR", p);
      break;
    } catch (e) {
      if (e instanceof DirectoryError) throw e;
      const code = (e as NodeJS.ErrnoException).code ?? "EIO";
      if (code !== "ENOENT" || p === "/") throw new DirectoryError(`cannot create ${path}: ${p}: ${code}`, code, p);
      todo.push(p);
      if (todo.length > maxNew)
        throw new DirectoryError(`cannot create ${path}: more than ${maxNew} directories are missing`, "ENAMETOOLONG", path);
    }
  }
  for (const dir of todo.reverse()) {
    try {
      mkdirSync(dir, { mode });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? "EIO";
      // Someone else made it meanwhile: fine when it is a directory.
      if (code === "EEXIST" && isDirectory(dir)) continue;
      throw new DirectoryError(`cannot create directory ${dir}: ${code}`, code, dir);
    }
  }
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
