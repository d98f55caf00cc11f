// Test scaffolding for storage tests: a scratch directory named with the test prefix, and a
// cleanup that unmounts, detaches and removes everything under it using the system tools
// (never the code under test), so a failing test still leaves nothing behind.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
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
  unmountAll(() => mountsUnder(dir));
  detachLoopsTagged(prefix);
  rmSync(dir, { recursive: true, force: true });
}

/** Unmounts everything strictly below `dir`, deepest first (a frozen file system thawed first). */
export function unmountUnder(dir: string): void {
  unmountAll(() => mountsUnder(dir).filter((m) => m !== dir));
}

/**
 * Makes `dir` a staging/target directory as kubelet makes its root dir: bound onto itself and
 * rshared, so mount namespaces other programs create meanwhile get the driver's unmounts and
 * never keep a test's loop device attached. teardownKernelObjects of a parent removes the bind.
 */
export function makeSharedDir(dir: string): void {
  mkdirSync(dir, { recursive: true });
  sh("mount", ["--bind", dir, dir]);
  sh("mount", ["--make-rshared", dir]);
}

/** Unmounts everything below `root`, then detaches the loop devices backed by files below it. */
export function teardownKernelObjects(root: string): void {
  unmountUnder(root);
  detachLoopsTagged(`${root}/`);
}

function unmountAll(list: () => string[]): void {
  for (let round = 0; round < 5; round++) {
    const mounts = list();
    if (mounts.length === 0) return;
    for (const m of mounts) {
      try {
        sh("fsfreeze", ["--unfreeze", m]);
      } catch {
        // not frozen
      }
      try {
        sh("umount", ["-l", m]);
      } catch {
        // unmounted with its parent already
      }
    }
  }
}

function detachLoopsTagged(tag: string): void {
  for (const l of loopsTagged(tag)) {
    try {
      sh("losetup", ["-d", l.name]);
    } catch {
      // detached meanwhile
    }
  }
}
