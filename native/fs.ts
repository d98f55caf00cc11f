// File and filesystem operations for volume back ends: capacity (statfs), preallocation,
// reflink clones with a caller-side fallback, sparse copies and filesystem freeze/thaw.
import { closeSync, constants, fstatSync, openSync, unlinkSync } from "node:fs";
import { addon, isSysError } from "./addon.ts";

/** A filesystem operation failure; `code` is the errno name. */
export class FsError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly path?: string,
  ) {
    super(message);
    this.name = "FsError";
  }
}

function fsError(e: unknown, what: string, path?: string): never {
  if (isSysError(e)) throw new FsError(`${what}: ${e.message}`, e.code, path);
  throw e;
}

export interface FsUsage {
  total: number;
  free: number;
  /** What an unprivileged user may still use (free minus the root reserve). */
  available: number;
  used: number;
}

export interface FilesystemStats {
  /** f_type magic, e.g. 0xef53 ext4, 0x58465342 xfs, 0x01021994 tmpfs. */
  type: number;
  blockSize: number;
  bytes: FsUsage;
  inodes: FsUsage;
  readOnly: boolean;
}

const ST_RDONLY = 0x1;

/** Capacity of the filesystem holding `path`, in bytes and inodes. */
export function statFs(path: string): FilesystemStats {
  let s: ReturnType<ReturnType<typeof addon>["statfs"]>;
  try {
    s = addon().statfs(path);
  } catch (e) {
    fsError(e, `statfs ${path}`, path);
  }
  // Block counts are in f_frsize units (the fundamental block size), not f_bsize.
  const unit = s.frsize || s.bsize;
  return {
    type: s.type,
    blockSize: unit,
    bytes: { total: s.blocks * unit, free: s.bfree * unit, available: s.bavail * unit, used: (s.blocks - s.bfree) * unit },
    // statfs has no "available inodes" distinct from free ones.
    inodes: { total: s.files, free: s.ffree, available: s.ffree, used: s.files - s.ffree },
    readOnly: (s.flags & ST_RDONLY) !== 0,
  };
}

function checkRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0) {
    throw new FsError(`invalid range offset=${offset} length=${length}`, "EINVAL");
  }
}

/** Reserves blocks for [offset, offset+length), growing the file if needed (ENOSPC when full). */
export function allocate(fd: number, offset: number, length: number): void {
  checkRange(offset, length);
  try {
    addon().fallocate(fd, 0, offset, length);
  } catch (e) {
    fsError(e, `fallocate ${length} bytes at ${offset}`);
  }
}

// FICLONE errors that mean "this filesystem (pair) cannot share extents", not a real failure.
const NO_REFLINK = new Set(["EOPNOTSUPP", "ENOTSUP", "EXDEV", "EINVAL", "ENOTTY", "ENOSYS"]);

function openSource(src: string): number {
  try {
    const fd = openSync(src, constants.O_RDONLY);
    if (!fstatSync(fd).isFile()) {
      closeSync(fd);
      throw new FsError(`${src} is not a regular file`, "EINVAL", src);
    }
    return fd;
  } catch (e) {
    if (e instanceof FsError) throw e;
    fsError(e, `open ${src}`, src);
  }
}

// Creates dst with the source's permission bits; never overwrites (EEXIST), so a failed
// clone can always be removed without losing anything that was there before.
function createDestination(dst: string, srcFd: number): number {
  const mode = fstatSync(srcFd).mode & 0o7777;
  try {
    return openSync(dst, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  } catch (e) {
    fsError(e, `create ${dst}`, dst);
  }
}

/**
 * Makes the new file `dst` a copy-on-write clone of `src` (FICLONE). Returns false, leaving
 * no file behind, when the filesystem cannot reflink (ext4, tmpfs, across filesystems): the
 * caller falls back to sparseCopyFile. Throws FsError EEXIST when `dst` exists.
 */
export function reflinkFile(src: string, dst: string): boolean {
  const srcFd = openSource(src);
  try {
    const fd = createDestination(dst, srcFd);
    let ok = false;
    try {
      addon().ficlone(fd, srcFd);
      ok = true;
    } catch (e) {
      if (!(isSysError(e) && NO_REFLINK.has(e.code))) fsError(e, `reflink ${src} to ${dst}`, dst);
    } finally {
      closeSync(fd);
      if (!ok) unlinkSync(dst);
    }
    return ok;
  } finally {
    closeSync(srcFd);
  }
}

/**
 * Copies `src` to the new file `dst`, writing only the source's data extents so holes stay
 * holes (on a reflink filesystem the kernel may share the extents instead). Runs on the
 * thread pool. Throws FsError EEXIST when `dst` exists; removes a partial `dst` on failure.
 */
export async function sparseCopyFile(src: string, dst: string): Promise<{ size: number; copiedBytes: number }> {
  const srcFd = openSource(src);
  try {
    const fd = createDestination(dst, srcFd);
    let result: { size: number; copiedBytes: number } | undefined;
    try {
      result = await addon().copyDataExtents(srcFd, fd);
    } catch (e) {
      fsError(e, `copy ${src} to ${dst}`, dst);
    } finally {
      closeSync(fd);
      if (!result) unlinkSync(dst);
    }
    return result;
  } finally {
    closeSync(srcFd);
  }
}

/** A filesystem frozen by freezeFilesystem; thaw() is safe to call twice. */
export interface FrozenFilesystem {
  readonly path: string;
  thaw(): Promise<void>;
}

/**
 * Freezes the filesystem mounted at `path` (FIFREEZE): dirty data is written out and every
 * new write blocks until thaw(). The caller must thaw it on every path (try/finally): a
 * filesystem left frozen stalls every writer on it. FsError EBUSY when already frozen.
 */
export async function freezeFilesystem(path: string): Promise<FrozenFilesystem> {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    fsError(e, `open ${path}`, path);
  }
  try {
    await addon().fsFreeze(fd, true);
  } catch (e) {
    closeSync(fd);
    fsError(e, `freeze ${path}`, path);
  }
  let frozen = true;
  return {
    path,
    async thaw() {
      if (!frozen) return;
      frozen = false;
      try {
        await addon().fsFreeze(fd, false);
      } catch (e) {
        fsError(e, `thaw ${path}`, path);
      } finally {
        closeSync(fd);
      }
    },
  };
}

/**
 * Thaws the filesystem mounted at `path` (FITHAW) whoever froze it, e.g. a process that died
 * while it held the freeze. False when it was not frozen.
 */
export async function thawFilesystem(path: string): Promise<boolean> {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    fsError(e, `open ${path}`, path);
  }
  try {
    await addon().fsFreeze(fd, false);
    return true;
  } catch (e) {
    if (isSysError(e) && e.code === "EINVAL") return false;
    fsError(e, `thaw ${path}`, path);
  } finally {
    closeSync(fd);
  }
}

/**
 * Runs `fn` while every filesystem in `paths` is frozen: all are frozen before `fn` starts
 * (one point in time for all of them) and all are thawed after it, also when a freeze or
 * `fn` fails. A failed thaw is reported after the others were thawed.
 */
export async function withFrozenFilesystems<T>(paths: string[], fn: () => Promise<T>): Promise<T> {
  const frozen: FrozenFilesystem[] = [];
  let failure: unknown;
  let result: T | undefined;
  try {
    for (const p of paths) frozen.push(await freezeFilesystem(p));
    result = await fn();
  } catch (e) {
    failure = e;
  }
  for (const f of frozen.reverse()) {
    try {
      await f.thaw();
    } catch (e) {
      failure ??= e;
    }
  }
  if (failure !== undefined) throw failure;
  return result as T;
}
