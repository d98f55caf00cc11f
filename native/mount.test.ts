import { closeSync, mkdirSync, openSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { sh } from "../testing/kernel.ts";
import { makeScratch, type Scratch } from "../testing/storage.ts";
import { attachLoop } from "./loop.ts";
import {
  bindMount,
  isMountPoint,
  MountError,
  mountFilesystem,
  mountsAt,
  parseMountInfo,
  planFilesystemMount,
  readMountInfo,
  splitMountOptions,
  unmount,
} from "./mount.ts";

interface FindmntEntry {
  target: string;
  source: string;
  fstype: string;
  options: string;
}

/** What findmnt says is mounted at `target` (top mount last), read independently of our parser. */
function findmnt(target: string): FindmntEntry[] {
  try {
    const out = sh("findmnt", ["-J", "-l", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS", "--mountpoint", target]);
    return (JSON.parse(out) as { filesystems: FindmntEntry[] }).filesystems;
  } catch {
    return []; // findmnt exits 1 when nothing matches
  }
}

function options(e: FindmntEntry | undefined): string[] {
  return e?.options.split(",") ?? [];
}

describe("mountinfo parsing", () => {
  it("parses optional fields, escapes and empty super options", () => {
    const text = [
      "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:4 - ext3 /dev/root rw,errors=continue",
      "40 36 0:33 / /srv/with\\040space\\011tab\\134slash rw,nosuid - tmpfs my\\040src ",
    ].join("\n");
    const [a, b] = parseMountInfo(text);
    expect(a).toMatchObject({
      id: 36,
      parentId: 35,
      majorMinor: "98:0",
      major: 98,
      minor: 0,
      root: "/mnt1",
      mountPoint: "/mnt2",
      mountOptions: ["rw", "noatime"],
      optionalFields: ["master:1", "shared:4"],
      fsType: "ext3",
      source: "/dev/root",
      superOptions: ["rw", "errors=continue"],
    });
    expect(b?.mountPoint).toBe("/srv/with space\ttab\\slash");
    expect(b?.source).toBe("my src");
    expect(b?.optionalFields).toEqual([]);
    expect(b?.superOptions).toEqual([]);
  });

  it("rejects a malformed line with a typed error", () => {
    expect(() => parseMountInfo("36 35 98:0 / /x rw shared:1")).toThrow(MountError);
  });

  it("reads this process's table, which has a root mount", () => {
    const table = readMountInfo();
    expect(table.some((m) => m.mountPoint === "/")).toBe(true);
    expect(isMountPoint("/proc")).toBe(true);
    expect(isMountPoint("/proc/self")).toBe(false);
  });
});

describe("splitMountOptions", () => {
  it("separates mount flags from filesystem data", () => {
    const { flags, data } = splitMountOptions([
      "defaults",
      "ro",
      "nosuid",
      "nodev",
      "noexec",
      "noatime",
      "discard",
      "errors=remount-ro",
    ]);
    expect(flags).toBe(0x1 | 0x2 | 0x4 | 0x8 | 0x400);
    expect(data).toBe("discard,errors=remount-ro");
    expect(splitMountOptions(["ro", "rw"]).flags).toBe(0);
  });
  it("refuses bind and remount as filesystem options", () => {
    expect(() => splitMountOptions(["bind"])).toThrow(/bindMount/);
    expect(() => planFilesystemMount(["remount"])).toThrow(/bindMount/);
  });
  it("plans per-mount attributes and superblock parameters for the new mount API", () => {
    expect(planFilesystemMount(["defaults", "nosuid", "nodev", "noatime", "discard", "errors=remount-ro", "ro"])).toEqual({
      attrs: 0x1 | 0x2 | 0x4 | 0x10,
      params: ["discard", "errors=remount-ro", "ro"],
    });
    // Later words win; atime modes replace each other.
    expect(planFilesystemMount(["ro", "rw", "noatime", "strictatime", "sync"])).toEqual({ attrs: 0x20, params: ["sync"] });
  });
});

describe("mounting on the real kernel", () => {
  let scratch: Scratch;
  beforeEach(() => {
    scratch = makeScratch();
  });
  afterEach(() => {
    scratch.cleanup();
  });

  function dir(name: string): string {
    const p = scratch.path(name);
    mkdirSync(p, { recursive: true });
    return p;
  }

  it("bind-mounts a directory and unmounts it idempotently", () => {
    const src = dir("src");
    const dst = dir("dst");
    writeFileSync(`${src}/hello`, "from source");
    bindMount(src, dst);
    expect(readFileSync(`${dst}/hello`, "utf8")).toBe("from source");
    const seen = findmnt(dst);
    expect(seen).toHaveLength(1);
    expect(options(seen[0])).toContain("rw");
    expect(isMountPoint(dst)).toBe(true);
    expect(mountsAt(dst)[0]?.root).toBe(src); // /tmp is on the root filesystem here
    expect(unmount(dst)).toBe(true);
    expect(findmnt(dst)).toHaveLength(0);
    expect(isMountPoint(dst)).toBe(false);
    expect(unmount(dst)).toBe(false);
    expect(unmount(scratch.path("never-existed"))).toBe(false);
  });

  it("makes a read-only bind really read-only, with extra flags", () => {
    const src = dir("src");
    const dst = dir("ro");
    bindMount(src, dst, { readOnly: true, flags: ["nosuid", "nodev", "noexec"] });
    const opts = options(findmnt(dst)[0]);
    expect(opts[0]).toBe("ro");
    expect(opts).toEqual(expect.arrayContaining(["nosuid", "nodev", "noexec"]));
    try {
      writeFileSync(`${dst}/x`, "nope");
      expect.unreachable();
    } catch (e) {
      expect((e as NodeJS.ErrnoException).code).toBe("EROFS");
    }
    // The source stays writable.
    writeFileSync(`${src}/x`, "yes");
    expect(readFileSync(`${dst}/x`, "utf8")).toBe("yes");
    const parsed = mountsAt(dst).at(-1);
    expect(parsed?.mountOptions).toEqual(expect.arrayContaining(["ro", "nosuid", "nodev", "noexec"]));
  });

  it("bind-mounts a file onto a file", () => {
    const src = scratch.path("file-src");
    const dst = scratch.path("file-dst");
    writeFileSync(src, "payload");
    writeFileSync(dst, "");
    bindMount(src, dst);
    expect(readFileSync(dst, "utf8")).toBe("payload");
    expect(findmnt(dst)).toHaveLength(1);
  });

  it("finds a mount point whose path has a space", () => {
    const src = dir("src");
    const dst = dir("with space");
    bindMount(src, dst);
    const raw = readFileSync("/proc/self/mountinfo", "utf8");
    expect(raw).toContain(dst.replace(/ /g, "\\040")); // the kernel really escapes it
    const found = mountsAt(dst);
    expect(found).toHaveLength(1);
    expect(found[0]?.mountPoint).toBe(dst);
    expect(findmnt(dst)[0]?.target).toBe(dst);
  });

  it("mounts an ext4 image on a loop device with flags and data options", () => {
    const img = scratch.path("fs.img");
    writeFileSync(img, "");
    truncateSync(img, 64 * 1024 * 1024);
    sh("mkfs.ext4", ["-q", "-F", img]);
    const loop = attachLoop(img);
    const mnt = dir("mnt");
    mountFilesystem(loop.device, mnt, "ext4", { options: ["noatime", "nodev", "discard"] });
    const seen = findmnt(mnt)[0];
    expect(seen?.source).toBe(loop.device);
    expect(seen?.fstype).toBe("ext4");
    expect(options(seen)).toEqual(expect.arrayContaining(["rw", "noatime", "nodev", "discard"]));
    writeFileSync(`${mnt}/file`, "on ext4");
    const parsed = mountsAt(mnt)[0];
    expect(parsed).toMatchObject({ fsType: "ext4", source: loop.device });
    expect(parsed?.superOptions).toContain("discard");
    expect(unmount(mnt)).toBe(true);
    expect(findmnt(mnt)).toHaveLength(0);

    mountFilesystem(loop.device, mnt, "ext4", { readOnly: true });
    expect(options(findmnt(mnt)[0])[0]).toBe("ro");
    expect(mountsAt(mnt)[0]?.superOptions[0]).toBe("ro"); // the filesystem itself, not just the mount
    expect(readFileSync(`${mnt}/file`, "utf8")).toBe("on ext4");
  });

  it("explains a wrong filesystem type or option", () => {
    const img = scratch.path("blank.img");
    writeFileSync(img, "");
    truncateSync(img, 8 * 1024 * 1024);
    const loop = attachLoop(img);
    const mnt = dir("mnt");
    try {
      mountFilesystem(loop.device, mnt, "ext4");
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(MountError);
      expect((e as MountError).code).toBe("EINVAL");
      expect((e as Error).message).toMatch(/wrong filesystem type, bad option/);
    }
    expect(() => mountFilesystem(loop.device, mnt, "ext4; rm")).toThrow(/invalid filesystem type/);
    sh("mkfs.ext4", ["-q", "-F", img]);
    // The kernel's own complaint reaches the caller instead of "see dmesg".
    expect(() => mountFilesystem(loop.device, mnt, "ext4", { options: ["bogus_option"] })).toThrow(
      expect.objectContaining({ code: "EINVAL", message: expect.stringMatching(/ext4: Unknown parameter 'bogus_option'/) }),
    );
    expect(() => bindMount(scratch.path("nope"), mnt)).toThrow(MountError);
    expect(() => bindMount(scratch.dir, mnt, { flags: ["rw" as "nodev"] })).toThrow(/unsupported bind mount flag/);
    expect(findmnt(mnt)).toHaveLength(0);
  });

  it("refuses to unmount a busy mount unless detaching", () => {
    const src = dir("src");
    const dst = dir("busy");
    writeFileSync(`${src}/open`, "x");
    bindMount(src, dst);
    const fd = openSync(`${dst}/open`, "r");
    try {
      try {
        unmount(dst);
        expect.unreachable();
      } catch (e) {
        expect(e).toBeInstanceOf(MountError);
        expect((e as MountError).code).toBe("EBUSY");
      }
      expect(findmnt(dst)).toHaveLength(1);
      expect(unmount(dst, { detach: true })).toBe(true);
      expect(findmnt(dst)).toHaveLength(0);
      // The open file still works after a lazy unmount.
      expect(readFileSync(fd, "utf8")).toBe("x");
    } finally {
      closeSync(fd);
    }
  });
});
