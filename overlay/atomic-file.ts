// Crash-safe file replacement: write a temp file beside the target, fsync it, rename it over
// the target, fsync the directory. A reader sees the old content or the new, never a torn file.
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { makeDirectory } from "../cni/protocol/files.ts";

export function writeFileAtomic(path: string, data: string, mode = 0o644): void {
  const dir = dirname(path);
  makeDirectory(dir, 0o755);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  const fd = openSync(tmp, "w", mode);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    unlinkSync(tmp);
    throw e;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (e) {
    unlinkSync(tmp);
    throw e;
  }
  const dirFd = openSync(dir, "r");
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}
