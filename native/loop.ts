// Loop devices: attach a file, find the device that backs a file, list, grow and detach.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { addon, isSysError, type LoopStatus } from "./addon.ts";

/** A loop device bound to a backing file. */
export interface LoopDevice {
  number: number;
  /** "/dev/loopN" */
  device: string;
  /** Full path from sysfs (the ioctl's name field stops at 63 bytes); may end in " (deleted)". */
  backingFile: string;
  backingDevice: number;
  backingInode: number;
  offset: number;
  sizeBytes: number;
  directIo: boolean;
  readOnly: boolean;
  autoClear: boolean;
}

/** A loop-device failure; `code` is the errno name (ENOENT, EBUSY, ENXIO...). */
export class LoopError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly device?: string,
  ) {
    super(message);
    this.name = "LoopError";
  }
}

const SYS_BLOCK = "/sys/block";

function devicePath(n: number): string {
  return `/dev/loop${n}`;
}

function checkNumber(n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > 0xfffff) throw new LoopError(`invalid loop device number ${n}`, "EINVAL");
}

function readBackingFile(n: number): string | null {
  try {
    return readFileSync(`${SYS_BLOCK}/loop${n}/loop/backing_file`, "utf8").replace(/\n$/, "");
  } catch {
    return null; // not bound (the loop/ directory exists only while a file is attached)
  }
}

function toLoopDevice(status: LoopStatus, backingFile: string | null): LoopDevice {
  return {
    number: status.number,
    device: devicePath(status.number),
    backingFile: backingFile ?? status.fileName,
    backingDevice: status.backingDevice,
    backingInode: status.backingInode,
    offset: status.offset,
    sizeBytes: status.sizeBytes,
    directIo: status.directIo,
    readOnly: status.readOnly,
    autoClear: status.autoClear,
  };
}

function loopError(e: unknown, what: string, device?: string): never {
  if (isSysError(e)) throw new LoopError(`${what}: ${e.message}`, e.code, device);
  throw e;
}

/** The state of /dev/loopN, or null when it has no backing file. */
export function loopStatus(n: number): LoopDevice | null {
  checkNumber(n);
  let status: LoopStatus | null;
  try {
    status = addon().loopStatus(n);
  } catch (e) {
    loopError(e, `status of ${devicePath(n)}`, devicePath(n));
  }
  return status ? toLoopDevice(status, readBackingFile(n)) : null;
}

export interface AttachOptions {
  /** Bypass the page cache of the backing file (falls back to buffered when the filesystem refuses). */
  directIo?: boolean;
  readOnly?: boolean;
}

/** Attaches `file` to a free loop device. Check `directIo` on the result: it may have fallen back. */
export function attachLoop(file: string, options: AttachOptions = {}): LoopDevice {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file);
  } catch (e) {
    loopError(e, `backing file ${file}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new LoopError(`backing file ${file} is not a regular file`, "EINVAL");
  let n: number;
  try {
    n = addon().loopAttach(file, { directIo: options.directIo ?? false, readOnly: options.readOnly ?? false });
  } catch (e) {
    loopError(e, `attach ${file} to a loop device`);
  }
  const attached = loopStatus(n);
  if (!attached) throw new LoopError(`${devicePath(n)} lost its backing file right after attach`, "ENXIO", devicePath(n));
  return attached;
}

/**
 * Detaches /dev/loopN. Returns false when it had no backing file. While the device is
 * still open (mounted, for instance) the kernel defers the detach to the last close.
 */
export function detachLoop(n: number): boolean {
  checkNumber(n);
  try {
    addon().loopDetach(n);
    return true;
  } catch (e) {
    if (isSysError(e, "ENXIO") || isSysError(e, "ENOENT")) return false;
    loopError(e, `detach ${devicePath(n)}`, devicePath(n));
  }
}

/** Every bound loop device on the host, by number. */
export function listLoops(): LoopDevice[] {
  let names: string[];
  try {
    names = readdirSync(SYS_BLOCK);
  } catch {
    return [];
  }
  const loops: LoopDevice[] = [];
  for (const name of names) {
    const m = /^loop(\d+)$/.exec(name);
    if (!m) continue;
    const n = Number(m[1]);
    const backing = readBackingFile(n);
    if (backing === null) continue;
    try {
      const status = addon().loopStatus(n);
      // Detached between the sysfs read and the ioctl: skip.
      if (status) loops.push(toLoopDevice(status, backing));
    } catch {
      // a device node we cannot open is not ours to report
    }
  }
  return loops.sort((a, b) => a.number - b.number);
}

/** Makes /dev/loopN pick up the new size of its grown backing file; returns the new size. */
export function refreshLoopCapacity(n: number): number {
  checkNumber(n);
  try {
    addon().loopSetCapacity(n);
  } catch (e) {
    loopError(e, `refresh capacity of ${devicePath(n)}`, devicePath(n));
  }
  const status = loopStatus(n);
  if (!status) throw new LoopError(`${devicePath(n)} has no backing file`, "ENXIO", devicePath(n));
  return status.sizeBytes;
}
