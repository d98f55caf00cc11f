// Volume back ends on the node: every volume is a sparse image file under the data dir
// (names we generate), attached to a loop device when used. A `dir` volume and a formatted
// `block` volume hold a filesystem (ext4/xfs) in the image; that is what enforces capacity
// when the data dir's filesystem has no project quotas. Raw `block` volumes are the bare image.
import { execFile } from "node:child_process";
import {
  closeSync,
  existsSync,
  fsyncSync,
  ftruncateSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { reflinkFile, sparseCopyFile, withFrozenFilesystems } from "../native/fs.ts";
import { attachLoop, detachLoop, type LoopDevice, listLoops } from "../native/loop.ts";
import { isMountPoint, mountFilesystem, unmount } from "../native/mount.ts";
import type { MountOptions } from "./mount-flags.ts";
import { makeDirectories } from "./paths.ts";

const run = promisify(execFile);

export type CopyMethod = "reflink" | "sparse-copy";

/** How capacity of `dir` volumes is enforced on this data dir. */
export type Enforcement = "project-quota" | "loop-filesystem";

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** Smallest image we make for a filesystem (xfs refuses anything under 300 MiB). */
export function minimumSize(fsType: string): number {
  if (fsType === "xfs") return 300 * MiB;
  if (fsType === "ext4") return 16 * MiB;
  return 1 * MiB;
}

export class OnlineResizeUnavailable extends Error {
  override name = "OnlineResizeUnavailable";
}

/** CAP_SYS_RESOURCE (bit 24) in our effective set: ext4 online resize needs it. */
export function canResizeExt4Online(): boolean {
  const hex = /^CapEff:\s+([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? "0";
  return (BigInt(`0x${hex}`) & (1n << 24n)) !== 0n;
}

export class BackingStore {
  readonly imageDir: string;
  readonly mountDir: string;
  readonly snapshotDir: string;

  constructor(readonly dataDir: string) {
    this.imageDir = join(dataDir, "images");
    this.mountDir = join(dataDir, "mounts");
    this.snapshotDir = join(dataDir, "snapshots");
    for (const d of [this.imageDir, this.mountDir, this.snapshotDir]) makeDirectories(d, 0o700);
  }

  imagePath(volumeId: string): string {
    return join(this.imageDir, `${volumeId}.img`);
  }

  snapshotPath(snapshotId: string): string {
    return join(this.snapshotDir, `${snapshotId}.img`);
  }

  /** Where a dir volume's filesystem is mounted on this node. */
  dirMountPath(volumeId: string): string {
    return join(this.mountDir, volumeId);
  }

  /** The directory a dir volume exposes (inside its filesystem, so lost+found stays hidden). */
  dirDataPath(volumeId: string): string {
    return join(this.dirMountPath(volumeId), "data");
  }

  /** The data dir's filesystem decides whether project quotas could be used instead of loops. */
  detectEnforcement(): { enforcement: Enforcement; reason: string } {
    const fs = readFileSync("/proc/self/mountinfo", "utf8");
    let best: { target: string; fsType: string; opts: string } | undefined;
    for (const line of fs.split("\n")) {
      const [left, right] = line.split(" - ");
      if (!left || !right) continue;
      const target = left.split(" ")[4] ?? "";
      if (!(this.dataDir === target || this.dataDir.startsWith(target.endsWith("/") ? target : `${target}/`))) continue;
      if (best && best.target.length > target.length) continue;
      const [fsType = "", , superOpts = ""] = right.split(" ");
      best = { target, fsType, opts: superOpts };
    }
    const opts = best?.opts.split(",") ?? [];
    const hasPrj = opts.includes("prjquota") || opts.includes("pquota") || opts.includes("pqnoenforce");
    if (best && hasPrj && (best.fsType === "xfs" || best.fsType === "ext4")) {
      // Detected, but berth does not drive project quotas yet: it still uses loop filesystems.
      return { enforcement: "loop-filesystem", reason: `${best.fsType} with project quotas at ${best.target} (not used yet)` };
    }
    return {
      enforcement: "loop-filesystem",
      reason: `${best?.fsType ?? "unknown"} at ${best?.target ?? "?"} has no project quota option (prjquota/pquota)`,
    };
  }

  /** Creates a sparse image (through a temp name, so a crash never leaves a half-made one). */
  async createImage(path: string, size: number, fsType: string): Promise<void> {
    const tmp = `${path}.tmp`;
    rmSync(tmp, { force: true });
    const fd = openSync(tmp, "wx", 0o600);
    try {
      ftruncateSync(fd, size);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      if (fsType) await this.format(tmp, fsType);
      renameSync(tmp, path);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
  }

  async format(target: string, fsType: string): Promise<void> {
    if (fsType === "ext4") {
      // -m 0: a volume's size is all the user's; nodiscard keeps mkfs from touching every block.
      await run("mkfs.ext4", ["-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", target]);
    } else if (fsType === "xfs") {
      await run("mkfs.xfs", ["-q", "-f", "-K", target]);
    } else {
      throw new Error(`unsupported filesystem ${fsType}`);
    }
  }

  /**
   * Copies an image (reflink when the data dir can share extents, else a sparse copy). When
   * the source filesystem is mounted it is frozen for the copy, so the copy is consistent.
   */
  async copyImage(src: string, dst: string, frozenMount?: string): Promise<CopyMethod> {
    const [method] = await this.copyImagesTogether([{ src, dst }], frozenMount ? [frozenMount] : []);
    return method!;
  }

  /**
   * Copies several images as of one point in time: every filesystem in `frozenMounts` is
   * frozen before the first copy starts and thawed after the last one ends (also on failure),
   * so no write lands in one copy without the writes before it in the others. The copies run
   * side by side on the thread pool; each is synced and renamed into place after the thaw.
   */
  async copyImagesTogether(pairs: { src: string; dst: string }[], frozenMounts: string[]): Promise<CopyMethod[]> {
    for (const { dst } of pairs) rmSync(`${dst}.tmp`, { force: true });
    const methods = await withFrozenFilesystems(frozenMounts, async () => {
      const settled = await Promise.allSettled(pairs.map(({ src, dst }) => this.copyToTemp(src, `${dst}.tmp`)));
      const failed = settled.find((r) => r.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
      return settled.map((r) => (r as PromiseFulfilledResult<CopyMethod>).value);
    });
    for (const { dst } of pairs) {
      const fd = openSync(`${dst}.tmp`, "r+");
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(`${dst}.tmp`, dst);
    }
    return methods;
  }

  private async copyToTemp(src: string, tmp: string): Promise<CopyMethod> {
    if (reflinkFile(src, tmp)) return "reflink";
    await sparseCopyFile(src, tmp);
    return "sparse-copy";
  }

  /** Grows an image file (never shrinks). */
  growImage(path: string, size: number): void {
    const fd = openSync(path, "r+");
    try {
      if (statSync(path).size < size) ftruncateSync(fd, size);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  imageSize(path: string): number {
    return statSync(path).size;
  }

  /** Bytes the image holds on disk now (sparse files grow into their size later). */
  allocatedBytes(path: string): number {
    try {
      return statSync(path).blocks * 512;
    } catch {
      return 0;
    }
  }

  /** Loop devices backed by the image (matched by device and inode, not by name). */
  private loopsFor(path: string): LoopDevice[] {
    let st: ReturnType<typeof statSync>;
    try {
      st = statSync(path);
    } catch {
      return [];
    }
    return listLoops().filter((l) => l.backingDevice === st.dev && l.backingInode === st.ino);
  }

  /** The read-write loop device of an image. */
  loopFor(path: string): LoopDevice | undefined {
    return this.loopsFor(path).find((l) => !l.readOnly);
  }

  /** Attaches the image to a loop device unless one already backs it (idempotent). */
  ensureAttached(path: string): LoopDevice {
    const existing = this.loopFor(path);
    if (existing) return existing;
    if (!existsSync(path)) throw new Error(`backing file ${path} is missing`);
    return attachLoop(path, { directIo: true });
  }

  /**
   * A read-only loop device on the same image, for read-only raw publications: a read-only
   * bind mount of a device node does not stop writes to the device, a read-only device does.
   */
  ensureReadOnlyAttached(path: string): LoopDevice {
    const existing = this.loopsFor(path).find((l) => l.readOnly);
    if (existing) return existing;
    return attachLoop(path, { directIo: true, readOnly: true });
  }

  detachReadOnly(path: string): void {
    for (const l of this.loopsFor(path)) if (l.readOnly) detachLoop(l.number);
  }

  detachAll(path: string): void {
    for (const l of this.loopsFor(path)) detachLoop(l.number);
  }

  /** Mounts the image's filesystem at target unless something is already mounted there. */
  ensureMounted(path: string, target: string, fsType: string, opts: MountOptions): LoopDevice {
    const loop = this.ensureAttached(path);
    makeDirectories(target, 0o750);
    if (!isMountPoint(target)) {
      // xfs refuses a second filesystem with the same UUID, which every clone and snapshot has.
      const words = fsType === "xfs" ? [...opts.filesystem, "nouuid"] : opts.filesystem;
      mountFilesystem(loop.device, target, fsType, { readOnly: opts.readOnly, options: words });
    }
    return loop;
  }

  /**
   * Grows an unmounted ext4 to fill its device before it is mounted (restored or cloned to a
   * bigger size, or expanded while unstaged). Offline resize needs no CAP_SYS_RESOURCE.
   */
  async growExt4Offline(loop: LoopDevice): Promise<boolean> {
    const geometry = readExt4Geometry(loop.device);
    if (!geometry || geometry.blocks * geometry.blockSize + geometry.blockSize > loopSizeBytes(loop.number)) return false;
    try {
      await run("e2fsck", ["-f", "-p", loop.device]);
    } catch (e) {
      // 1: errors corrected; anything above means resize2fs would refuse too.
      if ((e as { code?: number }).code !== 1) throw e;
    }
    await run("resize2fs", [loop.device]);
    return true;
  }

  /** Grows a mounted filesystem to its (already refreshed) device; xfs and ext4 online. */
  async growMounted(loop: LoopDevice, fsType: string, mountPoint: string): Promise<void> {
    if (fsType === "xfs") {
      await run("xfs_growfs", [mountPoint]);
      return;
    }
    if (fsType !== "ext4") return;
    try {
      await run("resize2fs", [loop.device]);
    } catch (e) {
      // The kernel's online resize ioctl demands CAP_SYS_RESOURCE.
      if (/Permission denied/.test(String((e as { stderr?: string }).stderr ?? ""))) {
        throw new OnlineResizeUnavailable(
          "online ext4 resize needs CAP_SYS_RESOURCE, which this process lacks; the filesystem grows at the next NodeStageVolume",
        );
      }
      throw e;
    }
  }

  unmountAndDetach(path: string, mountPoint: string | undefined): void {
    if (mountPoint) unmountAll(mountPoint);
    this.detachAll(path);
  }

  removeFile(path: string): void {
    rmSync(path, { force: true });
    rmSync(`${path}.tmp`, { force: true });
  }
}

/** Unmounts everything stacked at target; a symlink at target is not followed (nothing of ours). */
export function unmountAll(target: string): void {
  for (let i = 0; i < 16 && unmount(target, { noFollow: true }); i++);
}

/** Current size of /dev/loopN in bytes (sysfs counts 512-byte sectors). */
export function loopSizeBytes(n: number): number {
  return Number(readFileSync(`/sys/block/loop${n}/size`, "utf8").trim()) * 512;
}

/**
 * Size of the ext4 filesystem on `device`, from its superblock (1 KiB at offset 1024): what
 * `dumpe2fs -h` prints as block count and size, without a process per NodeStageVolume.
 * Undefined when the device holds no ext4 superblock or cannot be read.
 */
export function readExt4Geometry(device: string): { blocks: number; blockSize: number } | undefined {
  const sb = Buffer.alloc(1024);
  let fd: number | undefined;
  try {
    fd = openSync(device, "r");
    if (readSync(fd, sb, 0, sb.length, 1024) !== sb.length) return undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  if (sb.readUInt16LE(0x38) !== 0xef53) return undefined; // s_magic
  const logBlockSize = sb.readUInt32LE(0x18);
  if (logBlockSize > 6) return undefined; // 1 KiB .. 64 KiB
  const INCOMPAT_64BIT = 0x80;
  const hi = sb.readUInt32LE(0x60) & INCOMPAT_64BIT ? sb.readUInt32LE(0x150) : 0;
  return { blocks: hi * 2 ** 32 + sb.readUInt32LE(0x04), blockSize: 1024 << logBlockSize };
}
