// Directory creation for paths that come from a network config (a dataDir), which may point
// anywhere, /proc and /sys included.
import { mkdirSync } from "node:fs";
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
