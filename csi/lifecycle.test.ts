import { execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { blockCap, createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";
import { teardownKernelObjects } from "../testing/storage.ts";

interface FindmntEntry {
  target: string;
  source: string;
  fstype: string;
  options: string;
}

function findmnt(target: string): FindmntEntry | undefined {
  try {
    const out = execFileSync("findmnt", ["-J", "--mountpoint", target], { encoding: "utf8" });
    return (JSON.parse(out) as { filesystems: FindmntEntry[] }).filesystems[0];
  } catch {
    return undefined;
  }
}

interface LosetupEntry {
  name: string;
  "back-file": string | null;
  dio: boolean;
}

function losetupFor(file: string): LosetupEntry[] {
  const out = execFileSync("losetup", ["-J", "-l", "-O", "NAME,BACK-FILE,DIO"], { encoding: "utf8" }).trim();
  if (!out) return [];
  return (JSON.parse(out) as { loopdevices: LosetupEntry[] }).loopdevices.filter((l) => (l["back-file"] ?? "").startsWith(file));
}

let t: TestDriver;

beforeEach(async () => {
  t = await createTestDriver(testPrefix());
  await t.start();
});

afterEach(async () => {
  await t.cleanup();
});

async function stageAndPublish(volumeId: string, cap: object, staging: string, target: string, readonly = false) {
  mkdirSync(staging, { recursive: true });
  await t.node.NodeStageVolume({ volume_id: volumeId, staging_target_path: staging, volume_capability: cap });
  await t.node.NodePublishVolume({
    volume_id: volumeId,
    staging_target_path: staging,
    target_path: target,
    volume_capability: cap,
    readonly,
  });
}

async function unpublishAndUnstage(volumeId: string, staging: string, target: string) {
  await t.node.NodeUnpublishVolume({ volume_id: volumeId, target_path: target });
  await t.node.NodeUnstageVolume({ volume_id: volumeId, staging_target_path: staging });
}

describe("dir volume", () => {
  it("keeps data across unpublish, unstage and a driver restart; the kernel shows the mounts", async () => {
    const cap = mountCap();
    const { volume } = await t.controller.CreateVolume({
      name: "pvc-dir",
      capacity_range: { required_bytes: String(64 * MiB) },
      volume_capabilities: [cap],
    });
    expect(volume.volume_id).toMatch(/^vol-/);
    expect(Number(volume.capacity_bytes)).toBe(64 * MiB);
    const staging = t.path("stage-dir");
    const target = t.path("pod-dir");
    await stageAndPublish(volume.volume_id, cap, staging, target);
    const m = findmnt(target);
    expect(m?.fstype).toBe("ext4");
    expect(m?.source).toMatch(/^\/dev\/loop\d+\[\/data\]$/);
    expect(losetupFor(t.dataDir)).toHaveLength(1);
    writeFileSync(join(target, "hello.txt"), "dir volume data");

    // Idempotent repeats.
    await stageAndPublish(volume.volume_id, cap, staging, target);
    await unpublishAndUnstage(volume.volume_id, staging, target);
    expect(existsSync(target)).toBe(false);
    expect(findmnt(target)).toBeUndefined();
    expect(losetupFor(t.dataDir)).toHaveLength(0);
    await unpublishAndUnstage(volume.volume_id, staging, target);

    await t.stop();
    await t.start();
    await stageAndPublish(volume.volume_id, cap, staging, target);
    expect(readFileSync(join(target, "hello.txt"), "utf8")).toBe("dir volume data");
    await unpublishAndUnstage(volume.volume_id, staging, target);
    await t.controller.DeleteVolume({ volume_id: volume.volume_id });
    expect(existsSync(join(t.dataDir, "images", `${volume.volume_id}.img`))).toBe(false);
  });

  it("enforces capacity: writing past the size fails with ENOSPC", async () => {
    const cap = mountCap();
    const { volume } = await t.controller.CreateVolume({
      name: "pvc-small",
      capacity_range: { required_bytes: String(16 * MiB), limit_bytes: String(16 * MiB) },
      volume_capabilities: [cap],
    });
    const staging = t.path("s");
    const target = t.path("p");
    await stageAndPublish(volume.volume_id, cap, staging, target);
    const fd = openSync(join(target, "fill"), "w");
    const chunk = Buffer.alloc(MiB, 1);
    let written = 0;
    let error: NodeJS.ErrnoException | undefined;
    try {
      for (let i = 0; i < 64; i++) written += writeSync(fd, chunk);
    } catch (e) {
      error = e as NodeJS.ErrnoException;
    } finally {
      closeSync(fd);
    }
    expect(error?.code).toBe("ENOSPC");
    expect(written).toBeLessThanOrEqual(16 * MiB);
    const stats = await t.node.NodeGetVolumeStats({ volume_id: volume.volume_id, volume_path: target });
    const bytes = stats.usage.find((u) => u.unit === "BYTES")!;
    expect(Number(bytes.total)).toBeLessThanOrEqual(16 * MiB);
    expect(Number(bytes.total)).toBeGreaterThan(8 * MiB);
    expect(stats.volume_condition.abnormal).toBe(false);
    await unpublishAndUnstage(volume.volume_id, staging, target);
  });
});

describe("block volume, raw", () => {
  it("publishes the loop device at a file; data written through it survives a reboot", async () => {
    const cap = blockCap();
    const { volume } = await t.controller.CreateVolume({
      name: "pvc-raw",
      capacity_range: { required_bytes: String(8 * MiB) },
      volume_capabilities: [cap],
      parameters: { kind: "block" },
    });
    const staging = t.path("stage-raw");
    const target = t.path("pod-raw");
    await stageAndPublish(volume.volume_id, cap, staging, target);
    const loops = losetupFor(join(t.dataDir, "images", volume.volume_id));
    expect(loops).toHaveLength(1);
    expect(loops[0]!.dio).toBe(true);
    expect(findmnt(target)?.source).toMatch(/devtmpfs|udev|\[\/loop\d+\]/);
    const pattern = Buffer.alloc(4096, 0xab);
    let fd = openSync(target, "r+");
    writeSync(fd, pattern, 0, 4096, 4096);
    closeSync(fd);
    // Writing past the end of the device fails.
    fd = openSync(target, "r+");
    expect(() => writeSync(fd, pattern, 0, 4096, 8 * MiB)).toThrow(/ENOSPC|EIO|EFBIG/);
    closeSync(fd);
    const stats = await t.node.NodeGetVolumeStats({ volume_id: volume.volume_id, volume_path: target });
    expect(stats.usage[0]!.total).toBe(String(8 * MiB));

    // Reboot: driver gone, every mount and loop gone.
    await t.stop();
    teardownKernelObjects(t.root);
    expect(losetupFor(t.dataDir)).toHaveLength(0);
    await t.start();
    expect(findmnt(target)).toBeDefined();
    fd = openSync(target, "r");
    const back = Buffer.alloc(4096);
    readSync(fd, back, 0, 4096, 4096);
    closeSync(fd);
    expect(back.equals(pattern)).toBe(true);
    // A read-only publication is a read-only loop device: writes through it fail.
    const roTarget = t.path("pod-raw-ro");
    const roCap = blockCap("SINGLE_NODE_MULTI_WRITER");
    await t.node.NodeUnpublishVolume({ volume_id: volume.volume_id, target_path: target });
    await t.node.NodePublishVolume({
      volume_id: volume.volume_id,
      staging_target_path: staging,
      target_path: roTarget,
      volume_capability: roCap,
      readonly: true,
    });
    const writeThrough = (path: string) => {
      const wfd = openSync(path, "r+"); // a read-only block device may still be opened for write
      try {
        writeSync(wfd, pattern, 0, 4096, 0);
      } finally {
        closeSync(wfd);
      }
    };
    expect(() => writeThrough(roTarget)).toThrow(/EROFS|EACCES|EPERM/);
    expect(losetupFor(join(t.dataDir, "images", volume.volume_id))).toHaveLength(2);
    await t.node.NodeUnpublishVolume({ volume_id: volume.volume_id, target_path: roTarget });
    expect(losetupFor(join(t.dataDir, "images", volume.volume_id))).toHaveLength(1);
    await t.node.NodeUnstageVolume({ volume_id: volume.volume_id, staging_target_path: staging });
    expect(existsSync(target)).toBe(false);
    expect(losetupFor(t.dataDir)).toHaveLength(0);
  });
});

describe.each(["ext4", "xfs"])("block volume with %s", (fsType) => {
  it("mounts at staging, binds per pod, survives restart and reboot", async () => {
    const cap = mountCap(fsType);
    const size = fsType === "xfs" ? 300 * MiB : 32 * MiB;
    const { volume } = await t.controller.CreateVolume({
      name: `pvc-${fsType}`,
      capacity_range: { required_bytes: String(size) },
      volume_capabilities: [cap],
      parameters: { kind: "block" },
    });
    const staging = t.path("stage");
    const target = t.path("pod");
    await stageAndPublish(volume.volume_id, cap, staging, target);
    expect(findmnt(staging)?.fstype).toBe(fsType);
    expect(findmnt(target)?.fstype).toBe(fsType);
    writeFileSync(join(target, "f.txt"), `data on ${fsType}`);
    await unpublishAndUnstage(volume.volume_id, staging, target);
    expect(findmnt(staging)).toBeUndefined();

    await t.stop();
    await t.start();
    await stageAndPublish(volume.volume_id, cap, staging, target);
    expect(readFileSync(join(target, "f.txt"), "utf8")).toBe(`data on ${fsType}`);

    // Reboot while published.
    await t.stop();
    teardownKernelObjects(t.root);
    expect(findmnt(target)).toBeUndefined();
    await t.start();
    expect(findmnt(staging)?.fstype).toBe(fsType);
    expect(readFileSync(join(target, "f.txt"), "utf8")).toBe(`data on ${fsType}`);

    // Read-only publish at a second target is refused for a single-writer volume.
    const second = t.path("pod2");
    await expect(
      t.node.NodePublishVolume({
        volume_id: volume.volume_id,
        staging_target_path: staging,
        target_path: second,
        volume_capability: cap,
      }),
    ).rejects.toMatchObject({ code: 9 });
    await unpublishAndUnstage(volume.volume_id, staging, target);
  });
});
