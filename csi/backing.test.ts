import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { testPrefix } from "../testing/kernel.ts";
import { readExt4Geometry } from "./backing.ts";

describe("readExt4Geometry", () => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-sb-`));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function dumpe2fs(file: string): { blocks: number; blockSize: number } {
    const out = execFileSync("dumpe2fs", ["-h", file], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    return {
      blocks: Number(/^Block count:\s+(\d+)/m.exec(out)![1]),
      blockSize: Number(/^Block size:\s+(\d+)/m.exec(out)![1]),
    };
  }

  it.each([
    ["64 MiB, 4 KiB blocks", 64 << 20, ["-b", "4096"]],
    ["20 MiB, 1 KiB blocks, no 64bit feature", 20 << 20, ["-b", "1024", "-O", "^64bit"]],
    ["3 GiB sparse, 64bit", 3 * 2 ** 30, []],
  ])("reads what dumpe2fs reads: %s", (_name, size, opts) => {
    const file = join(dir, `img-${size}`);
    writeFileSync(file, "");
    truncateSync(file, size);
    execFileSync("mkfs.ext4", ["-q", "-F", ...opts, file]);
    const got = readExt4Geometry(file);
    expect(got).toEqual(dumpe2fs(file));
    expect(got!.blocks * got!.blockSize).toBe(size);
  });

  it("is undefined for something that is not ext4, and for a missing device", () => {
    const file = join(dir, "zeros");
    writeFileSync(file, Buffer.alloc(8192));
    expect(readExt4Geometry(file)).toBeUndefined();
    expect(readExt4Geometry(join(dir, "absent"))).toBeUndefined();
    const xfs = join(dir, "xfs");
    writeFileSync(xfs, "");
    truncateSync(xfs, 300 << 20);
    execFileSync("mkfs.xfs", ["-q", "-f", xfs]);
    expect(readExt4Geometry(xfs)).toBeUndefined();
  });
});
