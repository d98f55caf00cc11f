// Files and directories named by a network config (a dataDir, a resolv.conf, an allowlist),
// which may point anywhere: /proc, /sys, /dev/zero, a FIFO.
import { closeSync, constants, fstatSync, mkdirSync, openSync, readSync, writeSync } from "node:fs";
import { dirname } from "node:path";

/**
 * mkdir -p, one level at a time, at most as deep as the path. Node 20's
 * mkdirSync({recursive: true}) spins forever when a parent refuses the create with ENOENT
 * (anything under /proc); a plugin must fail instead, with the errno of the level that refused.
 */
export function makeDirectory(path: string, mode = 0o700): void {
  try {
    mkdirSync(path, { mode });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return;
    if (code !== "ENOENT" || dirname(path) === path) throw e;
    makeDirectory(dirname(path), mode);
    mkdirSync(path, { mode });
  }
}

/**
 * The text of a regular file of at most `limit` bytes. Anything else fails with an Error saying
 * why: a FIFO or device would block or never end (readFileSync of /dev/zero fills memory), so
 * the file is opened non-blocking and checked before it is read.
 */
export function readSmallFile(path: string, limit: number): string {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    if (st.size > limit) throw new Error(`${path} is larger than ${limit} bytes`);
    const buf = Buffer.alloc(limit + 1);
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
      if (n > limit) throw new Error(`${path} is larger than ${limit} bytes`);
    }
    return buf.toString("utf8", 0, n);
  } finally {
    closeSync(fd);
  }
}

/**
 * Appends `text` to a log file named by a config or the environment, creating it (0644). Only a
 * regular file is written: opened non-blocking, a FIFO without a reader fails at once (ENXIO)
 * instead of blocking the plugin, or the whole fast-path server, in open(2).
 */
export function appendToLogFile(path: string, text: string): void {
  const fd = openSync(
    path,
    constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NONBLOCK | constants.O_NOCTTY,
    0o644,
  );
  try {
    if (!fstatSync(fd).isFile()) throw new Error(`${path} is not a regular file`);
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}
