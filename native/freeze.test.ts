// FIFREEZE/FITHAW through the addon, on a real ext4 mounted from a loop device: a frozen
// filesystem blocks a writer in another process until the thaw, and withFrozenFilesystems
// thaws on every path. Read back with a child process (timeout + dd), never our own API.
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sh } from "../testing/kernel.ts";
import { makeScratch, type Scratch } from "../testing/storage.ts";
import { FsError, freezeFilesystem, withFrozenFilesystems } from "./fs.ts";
import { attachLoop } from "./loop.ts";
import { mountFilesystem } from "./mount.ts";

const MiB = 1024 * 1024;

interface Writer {
  /** Resolves with dd's exit code once its write reached the disk. */
  done: Promise<number | null>;
  finished(): boolean;
}

/**
 * A small synced write to `file` by another process. A writer blocked on a frozen filesystem
 * cannot be killed (it sleeps uninterruptibly), so it is never waited for synchronously.
 */
function startWriter(file: string): Writer {
  const child = spawn("dd", ["if=/dev/zero", `of=${file}`, "bs=4k", "count=1", "conv=fsync"], { stdio: "ignore" });
  let finished = false;
  const done = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => {
      finished = true;
      resolve(code);
    }),
  );
  return { done, finished: () => finished };
}

/** True when the writer is still blocked after `ms`. */
async function blockedFor(w: Writer, ms: number): Promise<boolean> {
  await new Promise((r) => setTimeout(r, ms));
  return !w.finished();
}

describe("filesystem freeze", () => {
  let scratch: Scratch;
  const mounts: string[] = [];
  beforeAll(() => {
    scratch = makeScratch();
    try {
      for (const name of ["a", "b"]) {
        const img = scratch.path(`${name}.img`);
        writeFileSync(img, "");
        truncateSync(img, 32 * MiB);
        sh("mkfs.ext4", ["-q", "-F", img]);
        const mnt = scratch.path(name);
        mkdirSync(mnt);
        mountFilesystem(attachLoop(img).device, mnt, "ext4");
        mounts.push(mnt);
      }
    } catch (e) {
      scratch.cleanup();
      throw e;
    }
  });
  afterAll(() => {
    for (const m of mounts) spawnSync("fsfreeze", ["--unfreeze", m], { stdio: "ignore" });
    scratch.cleanup();
  });

  it("blocks writers until thawed; a second freeze is EBUSY", async () => {
    const [a] = mounts as [string];
    expect(await startWriter(`${a}/before`).done).toBe(0);
    const frozen = await freezeFilesystem(a);
    let writer: Writer | undefined;
    try {
      writer = startWriter(`${a}/during`);
      expect(await blockedFor(writer, 500)).toBe(true);
      await expect(freezeFilesystem(a)).rejects.toMatchObject({ code: "EBUSY" });
    } finally {
      await frozen.thaw();
    }
    await frozen.thaw(); // twice is fine
    expect(await writer?.done).toBe(0);
    expect(readFileSync(`${a}/during`).length).toBe(4096);
  });

  it("withFrozenFilesystems freezes all, then thaws all, also when the work fails", async () => {
    let writers: Writer[] = [];
    let blocked: boolean[] = [];
    await withFrozenFilesystems(mounts, async () => {
      writers = mounts.map((m) => startWriter(`${m}/x`));
      await new Promise((r) => setTimeout(r, 300));
      blocked = writers.map((w) => !w.finished());
    });
    expect(blocked).toEqual([true, true]);
    expect(await Promise.all(writers.map((w) => w.done))).toEqual([0, 0]);

    await expect(
      withFrozenFilesystems(mounts, async () => {
        throw new Error("copy failed");
      }),
    ).rejects.toThrow("copy failed");
    expect(await Promise.all(mounts.map((m) => startWriter(`${m}/z`).done))).toEqual([0, 0]);
  });

  it("thaws what it froze when a later freeze fails", async () => {
    const [a, b] = mounts as [string, string];
    const held = await freezeFilesystem(b);
    try {
      await expect(withFrozenFilesystems([a, b], async () => "never")).rejects.toBeInstanceOf(FsError);
      const w = startWriter(`${a}/w`);
      expect(await blockedFor(w, 2000)).toBe(false);
      expect(await w.done).toBe(0);
    } finally {
      await held.thaw();
    }
    await expect(freezeFilesystem(scratch.path("no-such-dir"))).rejects.toMatchObject({ code: "ENOENT" });
  });
});
