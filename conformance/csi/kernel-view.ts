// What the kernel says about the paths the driver was asked to publish: read back with
// findmnt and stat, never taken from the driver's replies.
import { execFileSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";

export interface MountEntry {
  target: string;
  source: string;
  fstype: string;
  options: string[];
}

/** The mount on exactly `path` (the top one when stacked), or null when nothing is mounted there. */
export function mountAt(path: string): MountEntry | null {
  let out: string;
  try {
    out = execFileSync("findmnt", ["-J", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS", "--mountpoint", path], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
  } catch {
    return null; // findmnt exits 1 when nothing is mounted there
  }
  const parsed = JSON.parse(out) as { filesystems?: { target: string; source: string; fstype: string; options: string }[] };
  const list = parsed.filesystems ?? [];
  const top = list[list.length - 1];
  return top ? { target: top.target, source: top.source, fstype: top.fstype, options: top.options.split(",") } : null;
}

/** Every mount point at or below `root`, deepest first (the order to unmount them in). */
export function mountsUnder(root: string): string[] {
  const found: string[] = [];
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const field = line.split(" ")[4];
    if (!field) continue;
    const target = field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
    if (target === root || target.startsWith(`${root}/`)) found.push(target);
  }
  return found.sort((a, b) => b.length - a.length);
}

export function isBlockDevice(path: string): boolean {
  try {
    return statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}

export function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Last-resort cleanup of a mount the driver left behind. */
export function forceUnmount(path: string): void {
  try {
    execFileSync("umount", ["-l", path], { stdio: "ignore" });
  } catch {
    // already gone
  }
}
