import { closeSync, openSync, renameSync, statSync, truncateSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { sh } from "../testing/kernel.ts";
import { makeScratch, type Scratch } from "../testing/storage.ts";
import { attachLoop, detachLoop, type LoopDevice, LoopError, listLoops, loopStatus, refreshLoopCapacity } from "./loop.ts";

/**
 * The loop device backed by `file`, matched by device and inode (as listLoops reports them),
 * so a renamed file, a "(deleted)" suffix or a new file at the same path cannot fool it.
 * null when none, or when the file is gone.
 */
function findLoopForFile(file: string): LoopDevice | null {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file);
  } catch {
    return null;
  }
  return listLoops().find((l) => l.backingDevice === st.dev && l.backingInode === st.ino) ?? null;
}

interface LosetupEntry {
  name: string;
  "back-file": string;
  dio: boolean;
  ro: boolean;
  autoclear: boolean;
}

function losetup(device: string): LosetupEntry | undefined {
  const out = JSON.parse(sh("losetup", ["-J", "-l"]) || '{"loopdevices":[]}') as { loopdevices?: LosetupEntry[] };
  return (out.loopdevices ?? []).find((l) => l.name === device);
}

function blockSize(device: string): number {
  return Number(sh("blockdev", ["--getsize64", device]).trim());
}

const MiB = 1024 * 1024;

describe("loop devices", () => {
  let scratch: Scratch;
  beforeEach(() => {
    scratch = makeScratch();
  });
  afterEach(() => {
    scratch.cleanup();
  });

  function image(name: string, size: number): string {
    const file = scratch.path(name);
    writeFileSync(file, "");
    truncateSync(file, size);
    return file;
  }

  it("attaches a file, finds and lists it, and detaches it", () => {
    const file = image("a.img", 32 * MiB);
    const loop = attachLoop(file);
    expect(loop.device).toBe(`/dev/loop${loop.number}`);
    const seen = losetup(loop.device);
    expect(seen?.["back-file"]).toBe(file);
    expect(seen?.ro).toBe(false);
    expect(seen?.autoclear).toBe(false);
    expect(blockSize(loop.device)).toBe(32 * MiB);
    expect(loop.sizeBytes).toBe(32 * MiB);
    expect(loop.backingFile).toBe(file);

    expect(findLoopForFile(file)?.number).toBe(loop.number);
    expect(listLoops().map((l) => l.number)).toContain(loop.number);
    expect(loopStatus(loop.number)?.backingFile).toBe(file);

    expect(detachLoop(loop.number)).toBe(true);
    expect(losetup(loop.device)).toBeUndefined();
    expect(loopStatus(loop.number)).toBeNull();
    expect(findLoopForFile(file)).toBeNull();
    // Repeating a detach is not an error.
    expect(detachLoop(loop.number)).toBe(false);
  });

  it("attaches with direct I/O and read-only as losetup reports them", () => {
    const file = image("dio.img", 8 * MiB);
    const loop = attachLoop(file, { directIo: true, readOnly: true });
    const seen = losetup(loop.device);
    // ext4 under /tmp supports O_DIRECT with 512-byte sectors, so no fallback happens here.
    expect(loop.directIo).toBe(true);
    expect(seen?.dio).toBe(true);
    expect(seen?.ro).toBe(true);
    expect(sh("blockdev", ["--getro", loop.device]).trim()).toBe("1");
    const fd = openSync(loop.device, "r+");
    try {
      expect(() => writeSync(fd, Buffer.alloc(512), 0, 512, 0)).toThrow(/EPERM|EROFS|EACCES/);
    } finally {
      closeSync(fd);
    }
    const buffered = attachLoop(image("buf.img", 8 * MiB));
    expect(losetup(buffered.device)?.dio).toBe(false);
  });

  it("refreshes the capacity after the backing file grew", () => {
    const file = image("grow.img", 16 * MiB);
    const loop = attachLoop(file);
    truncateSync(file, 48 * MiB);
    expect(blockSize(loop.device)).toBe(16 * MiB); // the kernel does not notice by itself
    expect(refreshLoopCapacity(loop.number)).toBe(48 * MiB);
    expect(blockSize(loop.device)).toBe(48 * MiB);
  });

  it("matches the backing file by inode, not by name", () => {
    const file = image("orig.img", 8 * MiB);
    const loop = attachLoop(file);
    const moved = scratch.path("moved.img");
    renameSync(file, moved);
    expect(findLoopForFile(moved)?.number).toBe(loop.number);
    // A new file at the old path is not the backing file.
    image("orig.img", 8 * MiB);
    expect(findLoopForFile(file)).toBeNull();
    // A deleted backing file shows up with the kernel's suffix.
    unlinkSync(moved);
    const listed = listLoops().find((l) => l.number === loop.number);
    expect(listed?.backingFile).toBe(`${moved} (deleted)`);
    expect(losetup(loop.device)?.["back-file"]).toContain("(deleted)");
  });

  it("keeps data written through the device in the file", () => {
    const file = image("data.img", 4 * MiB);
    const loop = attachLoop(file);
    const fd = openSync(loop.device, "r+");
    try {
      writeSync(fd, Buffer.from("berth-loop"), 0, 10, MiB);
    } finally {
      closeSync(fd);
    }
    sh("sync", []);
    expect(sh("dd", [`if=${file}`, "bs=1", `skip=${MiB}`, "count=10", "status=none"])).toBe("berth-loop");
  });

  it("gives typed errors for bad input", () => {
    expect(() => attachLoop(scratch.path("missing.img"))).toThrow(LoopError);
    try {
      attachLoop(scratch.path("missing.img"));
    } catch (e) {
      expect((e as LoopError).code).toBe("ENOENT");
    }
    try {
      attachLoop(scratch.dir);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(LoopError);
      expect((e as LoopError).code).toBe("EINVAL");
      expect((e as Error).message).toMatch(/not a regular file/);
    }
    expect(() => detachLoop(-1)).toThrow(/invalid loop device number/);
    expect(() => refreshLoopCapacity(1.5)).toThrow(LoopError);
  });
});
