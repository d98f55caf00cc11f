// Checks CSI mount_flags (fstab-style words) and splits them into what a bind mount can carry
// and what goes to the filesystem mount. Unknown words pass to the filesystem as data, but
// only in a safe character set.
import type { BindFlag } from "../native/mount.ts";
import { invalidArgument } from "./errors.ts";

const BIND_WORDS: ReadonlySet<string> = new Set<BindFlag>(["nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime"]);
const SAFE_WORD = /^[A-Za-z0-9_.:+-]+(=[A-Za-z0-9_.:/+-]*)?$/;
const REFUSED = new Set(["bind", "rbind", "remount", "move", "loop"]);

export interface MountOptions {
  readOnly: boolean;
  /** Words for mountFilesystem (flags and filesystem data). */
  filesystem: string[];
  /** The per-mount flags a bind mount can take. */
  bind: BindFlag[];
}

export function parseMountFlags(words: string[], readOnly: boolean): MountOptions {
  const filesystem: string[] = [];
  const bind: BindFlag[] = [];
  let ro = readOnly;
  for (const raw of words) {
    // A CO may send "a,b" as one entry.
    for (const word of raw.split(",").map((w) => w.trim())) {
      if (!word) continue;
      if (REFUSED.has(word)) throw invalidArgument(`mount flag ${JSON.stringify(word)} is not allowed`);
      if (!SAFE_WORD.test(word)) throw invalidArgument(`mount flag ${JSON.stringify(word)} is not a valid mount option`);
      if (word === "rw" && readOnly) throw invalidArgument("mount flag rw conflicts with a read-only publish");
      if (word === "ro") {
        ro = true;
        continue;
      }
      filesystem.push(word);
      if (BIND_WORDS.has(word)) bind.push(word as BindFlag);
    }
  }
  return { readOnly: ro, filesystem, bind };
}
