// Test scaffolding for storage tests: a scratch directory named with the test prefix, and a
// cleanup that unmounts, detaches and removes everything under it using the system tools
// (never the code under test), so a failing test still leaves nothing behind.

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { detachLoop, type LoopDevice, listLoops } from "../native/loop.ts";
import { readMountInfo, unmount } from "../native/mount.ts";
import { sh, testPrefix } from "./kernel.ts";

export interface Scratch {
  prefix: string;
  /** Absolute directory containing the prefix; every image and mount point lives below it. */
  dir: string;
  path(name: string): string;
  cleanup(): void;
}

export function makeScratch(): Scratch {
  const prefix = testPrefix();
  const dir = mkdtempSync(join(tmpdir(), `${prefix}-`));
  return { prefix, dir, path: (name) => join(dir, name), cleanup: () => cleanupScratch(prefix, dir) };
}

interface FindmntFs {
  target: string;
  children?: FindmntFs[];
}

/** Mount points below `dir`, deepest (and most recent) first. */
export function mountsUnder(dir: string): string[] {
  let out = "";
  try {
    out = sh("findmnt", ["-J", "-l", "-o", "TARGET"]);
  } catch {
    return [];
  }
  const list = (JSON.parse(out) as { filesystems: FindmntFs[] }).filesystems;
  return list
    .map((f) => f.target)
    .filter((t) => t === dir || t.startsWith(`${dir}/`))
    .reverse();
}

/** Loop devices whose backing file path contains `tag`. */
export function loopsTagged(tag: string): { name: string; backFile: string }[] {
  const out = JSON.parse(sh("losetup", ["-J", "-l"]) || '{"loopdevices":[]}') as {
    loopdevices?: { name: string; "back-file": string | null }[];
  };
  return (out.loopdevices ?? [])
    .filter((l) => (l["back-file"] ?? "").includes(tag))
    .map((l) => ({ name: l.name, backFile: l["back-file"] ?? "" }));
}

function cleanupScratch(prefix: string, dir: string): void {
  for (let round = 0; round < 5; round++) {
    const mounts = mountsUnder(dir);
    if (mounts.length === 0) break;
    for (const m of mounts) {
      try {
        sh("umount", ["-l", m]);
      } catch {
        // unmounted with its parent already
      }
    }
  }
  for (const l of loopsTagged(prefix)) {
    try {
      sh("losetup", ["-d", l.name]);
    } catch {
      // detached meanwhile
    }
  }
  rmSync(dir, { recursive: true, force: true });
}

/**
 * The loop device backed by `file`, matched by device and inode (as listLoops reports them),
 * so a renamed file, a "(deleted)" suffix or a new file at the same path cannot fool it.
 * null when none, or when the file is gone.
 */
export function findLoopForFile(file: string): LoopDevice | null {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file);
  } catch {
    return null;
  }
  return listLoops().find((l) => l.backingDevice === st.dev && l.backingInode === st.ino) ?? null;
}

/** Unmounts everything below `root` (fsfreeze thawed first) and detaches the loop devices backed by files below it. */
export function teardownKernelObjects(root: string): void {
  // Deepest mounts first, then loops whose backing file lives under root.
  for (let pass = 0; pass < 4; pass++) {
    const mine = readMountInfo()
      .filter((m) => m.mountPoint.startsWith(`${root}/`))
      .sort((a, b) => b.mountPoint.length - a.mountPoint.length || b.id - a.id);
    if (mine.length === 0) break;
    for (const m of mine) {
      try {
        execFileSync("fsfreeze", ["--unfreeze", m.mountPoint], { stdio: "ignore" });
      } catch {}
      unmount(m.mountPoint, { detach: true });
    }
  }
  for (const l of listLoops()) if (l.backingFile.startsWith(`${root}/`)) detachLoop(l.number);
}
