import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { sh } from "../testing/kernel.ts";
import { makeScratch, type Scratch } from "../testing/storage.ts";
import { allocate, FsError, reflinkFile, sparseCopyFile, statFs } from "./fs.ts";
import { attachLoop } from "./loop.ts";
import { mountFilesystem } from "./mount.ts";

const MiB = 1024 * 1024;

/** Allocated bytes as stat(1) reports them (st_blocks × 512). */
function allocatedBytes(file: string): number {
  return Number(sh("stat", ["-c", "%b", file]).trim()) * 512;
}

function sameContent(a: string, b: string): boolean {
  return readFileSync(a).equals(readFileSync(b));
}

/** A 64 MiB file with 1 MiB of random data at 0 and at 32 MiB, holes elsewhere. */
function sparseFile(path: string): void {
  const fd = openSync(path, "w");
  try {
    writeSync(fd, randomBytes(MiB), 0, MiB, 0);
    writeSync(fd, randomBytes(MiB), 0, MiB, 32 * MiB);
  } finally {
    closeSync(fd);
  }
  truncateSync(path, 64 * MiB);
}

describe("on the host filesystem (ext4)", () => {
  let scratch: Scratch;
  beforeEach(() => {
    scratch = makeScratch();
  });
  afterEach(() => {
    scratch.cleanup();
  });

  it("allocates blocks and grows the file to the range's end", () => {
    const file = scratch.path("alloc");
    const fd = openSync(file, "w+");
    try {
      allocate(fd, 0, 8 * MiB);
      expect(statSync(file).size).toBe(8 * MiB);
      expect(allocatedBytes(file)).toBeGreaterThanOrEqual(8 * MiB);
    } finally {
      closeSync(fd);
    }
  });

  it("rejects bad ranges and bad fds with typed errors", () => {
    const fd = openSync(scratch.path("f"), "w+");
    try {
      expect(() => allocate(fd, -1, 10)).toThrow(FsError);
      expect(() => allocate(fd, 0, 0)).toThrow(/invalid range/);
    } finally {
      closeSync(fd);
    }
    try {
      allocate(2 ** 30, 0, 4096); // no such descriptor
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(FsError);
      expect((e as FsError).code).toBe("EBADF");
    }
  });

  it("reports statfs figures like stat -f", () => {
    const s = statFs(scratch.dir);
    const [frsize, blocks, files] = sh("stat", ["-f", "-c", "%S %b %c", scratch.dir]).trim().split(" ").map(Number);
    expect(s.blockSize).toBe(frsize);
    expect(s.bytes.total).toBe((blocks ?? 0) * (frsize ?? 0));
    expect(s.inodes.total).toBe(files);
    expect(s.bytes.available).toBeLessThanOrEqual(s.bytes.free);
    expect(s.type).toBe(0xef53);
    expect(s.readOnly).toBe(false);
    expect(() => statFs(scratch.path("missing"))).toThrow(FsError);
  });

  it("cannot reflink on ext4: returns false and leaves no file", () => {
    const src = scratch.path("src");
    writeFileSync(src, "data");
    const dst = scratch.path("dst");
    expect(reflinkFile(src, dst)).toBe(false);
    expect(existsSync(dst)).toBe(false);
  });

  it("never overwrites a destination", async () => {
    const src = scratch.path("src");
    const dst = scratch.path("dst");
    writeFileSync(src, "new");
    writeFileSync(dst, "precious");
    expect(() => reflinkFile(src, dst)).toThrow(expect.objectContaining({ code: "EEXIST" }));
    await expect(sparseCopyFile(src, dst)).rejects.toMatchObject({ code: "EEXIST" });
    expect(readFileSync(dst, "utf8")).toBe("precious");
    expect(() => reflinkFile(scratch.dir, scratch.path("d2"))).toThrow(/not a regular file/);
  });

  it("copies a sparse file keeping its holes", async () => {
    const src = scratch.path("sparse.img");
    sparseFile(src);
    const dst = scratch.path("copy.img");
    const result = await sparseCopyFile(src, dst);
    expect(result).toEqual({ size: 64 * MiB, copiedBytes: 2 * MiB });
    expect(statSync(dst).size).toBe(64 * MiB);
    expect(sameContent(dst, src)).toBe(true);
    // Only the two data extents are allocated (ext4 may add an extent-tree block).
    expect(allocatedBytes(dst)).toBeGreaterThanOrEqual(2 * MiB);
    expect(allocatedBytes(dst)).toBeLessThanOrEqual(2 * MiB + 64 * 1024);
    expect(statSync(dst).mode & 0o777).toBe(statSync(src).mode & 0o777);
  });

  it("copies a file that ends in data and an empty file", async () => {
    const src = scratch.path("tail");
    writeFileSync(src, "");
    truncateSync(src, 4 * MiB);
    const fd = openSync(src, "r+");
    writeSync(fd, Buffer.from("end"), 0, 3, 4 * MiB - 3);
    closeSync(fd);
    await sparseCopyFile(src, scratch.path("tail-copy"));
    expect(sameContent(scratch.path("tail-copy"), src)).toBe(true);
    const empty = scratch.path("empty");
    writeFileSync(empty, "");
    expect(await sparseCopyFile(empty, scratch.path("empty-copy"))).toEqual({ size: 0, copiedBytes: 0 });
  });
});

describe("on an XFS image with reflink", () => {
  let scratch: Scratch;
  let mnt: string;
  beforeAll(() => {
    scratch = makeScratch();
    try {
      const img = scratch.path("xfs.img");
      writeFileSync(img, "");
      truncateSync(img, 320 * MiB); // mkfs.xfs refuses less than 300 MiB
      sh("mkfs.xfs", ["-q", "-m", "reflink=1", img]);
      const loop = attachLoop(img);
      mnt = scratch.path("xfs");
      mkdirSync(mnt);
      mountFilesystem(loop.device, mnt, "xfs");
    } catch (e) {
      scratch.cleanup();
      throw e;
    }
  });
  afterAll(() => {
    scratch.cleanup();
  });

  it("reflinks: shared extents, identical content, no new space used", () => {
    const src = `${mnt}/src.img`;
    sparseFile(src);
    sh("sync", []);
    const usedBefore = statFs(mnt).bytes.used;
    const dst = `${mnt}/clone.img`;
    expect(reflinkFile(src, dst)).toBe(true);
    sh("sync", []);
    expect(sameContent(dst, src)).toBe(true);
    expect(sh("filefrag", ["-v", dst])).toMatch(/shared/);
    // Sharing means the clone's 2 MiB of data cost (almost) nothing.
    expect(statFs(mnt).bytes.used - usedBefore).toBeLessThan(MiB);
  });

  it("cannot reflink across filesystems: false, no file left", () => {
    const src = `${mnt}/cross.img`;
    writeFileSync(src, "x");
    const dst = scratch.path("cross-copy");
    expect(reflinkFile(src, dst)).toBe(false);
    expect(existsSync(dst)).toBe(false);
  });

  it("reports statfs figures like stat -f on a quiet filesystem", () => {
    sh("sync", []);
    const s = statFs(mnt);
    const [frsize, blocks, free, avail, files, ffree] = sh("stat", ["-f", "-c", "%S %b %f %a %c %d", mnt])
      .trim()
      .split(" ")
      .map(Number);
    const unit = frsize ?? 0;
    expect(s.type).toBe(0x58465342);
    expect(s.bytes).toEqual({
      total: (blocks ?? 0) * unit,
      free: (free ?? 0) * unit,
      available: (avail ?? 0) * unit,
      used: ((blocks ?? 0) - (free ?? 0)) * unit,
    });
    expect(s.inodes.total).toBe(files);
    expect(s.inodes.free).toBe(ffree);
  });
});
