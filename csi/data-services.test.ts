// Snapshots, restore, clone and expansion, with real data read back through the kernel.
import { execFileSync } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { blockCap, createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";
import { canResizeExt4Online } from "./backing.ts";

let t: TestDriver;

beforeEach(async () => {
  t = await createTestDriver(testPrefix());
  await t.start();
});

afterEach(async () => {
  await t.cleanup();
});

function dfBytes(path: string): number {
  const out = execFileSync("df", ["-B1", "--output=size", path], { encoding: "utf8" }).trim().split("\n");
  return Number(out[1]);
}

async function use(volumeId: string, cap: object, name: string) {
  const staging = t.path(`${name}-stage`);
  const target = t.path(`${name}-pod`);
  mkdirSync(staging, { recursive: true });
  await t.node.NodeStageVolume({ volume_id: volumeId, staging_target_path: staging, volume_capability: cap });
  await t.node.NodePublishVolume({
    volume_id: volumeId,
    staging_target_path: staging,
    target_path: target,
    volume_capability: cap,
  });
  return {
    staging,
    target,
    async release() {
      await t.node.NodeUnpublishVolume({ volume_id: volumeId, target_path: target });
      await t.node.NodeUnstageVolume({ volume_id: volumeId, staging_target_path: staging });
    },
  };
}

describe("snapshots", () => {
  it("restores a dir volume to the snapshot's content, not to later writes", async () => {
    const cap = mountCap();
    const { volume } = await t.controller.CreateVolume({
      name: "src",
      capacity_range: { required_bytes: String(32 * MiB) },
      volume_capabilities: [cap],
    });
    const a = await use(volume.volume_id, cap, "a");
    writeFileSync(join(a.target, "v.txt"), "version 1");
    // Taken while mounted and in use: the filesystem is frozen for the copy.
    const { snapshot } = await t.controller.CreateSnapshot({ source_volume_id: volume.volume_id, name: "snap-1" });
    expect(snapshot.ready_to_use).toBe(true);
    expect(snapshot.source_volume_id).toBe(volume.volume_id);
    writeFileSync(join(a.target, "v.txt"), "version 2");
    writeFileSync(join(a.target, "later.txt"), "after the snapshot");

    // Idempotent on name; same name for another source is ALREADY_EXISTS.
    const again = await t.controller.CreateSnapshot({ source_volume_id: volume.volume_id, name: "snap-1" });
    expect(again.snapshot.snapshot_id).toBe(snapshot.snapshot_id);
    const { volume: other } = await t.controller.CreateVolume({
      name: "other",
      volume_capabilities: [cap],
      capacity_range: { required_bytes: String(16 * MiB) },
    });
    await expect(t.controller.CreateSnapshot({ source_volume_id: other.volume_id, name: "snap-1" })).rejects.toMatchObject({
      code: 6,
    });

    const { volume: restored } = await t.controller.CreateVolume({
      name: "restored",
      capacity_range: { required_bytes: String(64 * MiB) },
      volume_capabilities: [cap],
      volume_content_source: { snapshot: { snapshot_id: snapshot.snapshot_id } },
    });
    expect(restored.content_source.snapshot.snapshot_id).toBe(snapshot.snapshot_id);
    const b = await use(restored.volume_id, cap, "b");
    expect(readFileSync(join(b.target, "v.txt"), "utf8")).toBe("version 1");
    expect(() => readFileSync(join(b.target, "later.txt"))).toThrow(/ENOENT/);
    // Restored bigger than the source: the filesystem was grown to the new size at stage.
    expect(dfBytes(b.target)).toBeGreaterThan(48 * MiB);
    await b.release();
    await a.release();

    const listed = await t.controller.ListSnapshots({ source_volume_id: volume.volume_id });
    expect(listed.entries.map((e) => e.snapshot.snapshot_id)).toEqual([snapshot.snapshot_id]);
    const none = await t.controller.ListSnapshots({ source_volume_id: other.volume_id });
    expect(none.entries).toHaveLength(0);

    await t.controller.DeleteSnapshot({ snapshot_id: snapshot.snapshot_id });
    await t.controller.DeleteSnapshot({ snapshot_id: snapshot.snapshot_id });
    await expect(
      t.controller.CreateVolume({
        name: "from-gone",
        volume_capabilities: [cap],
        volume_content_source: { snapshot: { snapshot_id: snapshot.snapshot_id } },
      }),
    ).rejects.toMatchObject({ code: 5 });
  });

  it("paginates ListSnapshots and rejects a forged token with ABORTED", async () => {
    const cap = mountCap();
    const { volume } = await t.controller.CreateVolume({
      name: "v",
      capacity_range: { required_bytes: String(16 * MiB) },
      volume_capabilities: [cap],
    });
    const ids: string[] = [];
    for (let i = 0; i < 5; i++)
      ids.push((await t.controller.CreateSnapshot({ source_volume_id: volume.volume_id, name: `s${i}` })).snapshot.snapshot_id);
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await t.controller.ListSnapshots({ max_entries: 2, starting_token: token });
      expect(page.entries.length).toBeLessThanOrEqual(2);
      seen.push(...page.entries.map((e) => e.snapshot.snapshot_id));
      token = page.next_token;
      pages++;
    } while (token);
    expect(pages).toBe(3);
    expect(seen.sort()).toEqual(ids.sort());
    await expect(t.controller.ListSnapshots({ starting_token: "not-a-token" })).rejects.toMatchObject({ code: 10 });
  });
});

describe("clone", () => {
  it("clones a raw block volume byte for byte", async () => {
    const cap = blockCap();
    const { volume } = await t.controller.CreateVolume({
      name: "raw-src",
      capacity_range: { required_bytes: String(4 * MiB) },
      volume_capabilities: [cap],
      parameters: { kind: "block" },
    });
    const a = await use(volume.volume_id, cap, "a");
    const pattern = Buffer.alloc(8192);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7) & 0xff;
    const fd = openSync(a.target, "r+");
    writeSync(fd, pattern, 0, pattern.length, MiB);
    closeSync(fd);
    const { volume: clone } = await t.controller.CreateVolume({
      name: "raw-clone",
      capacity_range: { required_bytes: String(4 * MiB) },
      volume_capabilities: [cap],
      parameters: { kind: "block" },
      volume_content_source: { volume: { volume_id: volume.volume_id } },
    });
    // Smaller than the source is impossible.
    await expect(
      t.controller.CreateVolume({
        name: "raw-clone-small",
        capacity_range: { required_bytes: String(2 * MiB), limit_bytes: String(2 * MiB) },
        volume_capabilities: [cap],
        parameters: { kind: "block" },
        volume_content_source: { volume: { volume_id: volume.volume_id } },
      }),
    ).rejects.toMatchObject({ code: 11 });
    const b = await use(clone.volume_id, cap, "b");
    const back = Buffer.alloc(pattern.length);
    const rfd = openSync(b.target, "r");
    readSync(rfd, back, 0, back.length, MiB);
    closeSync(rfd);
    expect(back.equals(pattern)).toBe(true);
    await b.release();
    await a.release();
  });
});

describe.each(["ext4", "xfs"])("online expansion of %s", (fsType) => {
  it("grows the file, the loop device and the mounted filesystem", async () => {
    const cap = mountCap(fsType);
    const size = fsType === "xfs" ? 300 * MiB : 32 * MiB;
    const { volume } = await t.controller.CreateVolume({
      name: "grow",
      capacity_range: { required_bytes: String(size) },
      volume_capabilities: [cap],
      parameters: { kind: "block" },
    });
    const a = await use(volume.volume_id, cap, "a");
    const before = dfBytes(a.target);
    const expanded = await t.controller.ControllerExpandVolume({
      volume_id: volume.volume_id,
      capacity_range: { required_bytes: String(size * 2) },
    });
    expect(expanded.node_expansion_required).toBe(true);
    expect(Number(expanded.capacity_bytes)).toBe(size * 2);
    const expand = () =>
      t.node.NodeExpandVolume({
        volume_id: volume.volume_id,
        volume_path: a.target,
        capacity_range: { required_bytes: String(size * 2) },
      });
    if (fsType === "ext4" && !canResizeExt4Online()) {
      // The kernel refuses ext4 online resize without CAP_SYS_RESOURCE: a clear
      // FAILED_PRECONDITION, and the filesystem grows offline at the next stage.
      await expect(expand()).rejects.toMatchObject({ code: 9, details: expect.stringMatching(/CAP_SYS_RESOURCE/) });
      expect(dfBytes(a.target)).toBe(before);
      await a.release();
      Object.assign(a, await use(volume.volume_id, cap, "a"));
    } else {
      const node = await expand();
      expect(Number(node.capacity_bytes)).toBe(size * 2);
    }
    const after = dfBytes(a.target);
    expect(after).toBeGreaterThan(before + size * 0.8);
    // Repeating is a no-op.
    const again = await t.controller.ControllerExpandVolume({
      volume_id: volume.volume_id,
      capacity_range: { required_bytes: String(size) },
    });
    expect(Number(again.capacity_bytes)).toBe(size * 2);
    const stats = await t.node.NodeGetVolumeStats({ volume_id: volume.volume_id, volume_path: a.target });
    expect(Number(stats.usage.find((u) => u.unit === "BYTES")!.total)).toBe(after);
    await a.release();
  });
});

describe("capacity", () => {
  it("GetCapacity subtracts space promised to sparse volumes", async () => {
    const cap = mountCap();
    const before = Number((await t.controller.GetCapacity({ volume_capabilities: [cap] })).available_capacity);
    await t.controller.CreateVolume({
      name: "big",
      capacity_range: { required_bytes: String(512 * MiB) },
      volume_capabilities: [cap],
    });
    const after = Number((await t.controller.GetCapacity({ volume_capabilities: [cap] })).available_capacity);
    // The image is sparse (a few MiB on disk) yet 512 MiB is spoken for.
    expect(before - after).toBeGreaterThan(500 * MiB);
    expect(before - after).toBeLessThan(530 * MiB);
  });

  it("GetCapacity takes capabilities without an access mode, as external-provisioner's capacity tracking sends them", async () => {
    // csi-provisioner asks per StorageClass with the access type alone (mount or block).
    const withMode = await t.controller.GetCapacity({ volume_capabilities: [mountCap()] });
    for (const [cap, parameters] of [
      [{ mount: {} }, {}],
      [{ mount: {} }, { kind: "block" }],
      [{ block: {} }, { kind: "block" }],
    ] as const) {
      const r = await t.controller.GetCapacity({ volume_capabilities: [cap], parameters });
      expect(Number(r.available_capacity)).toBeGreaterThan(0);
      expect(Math.abs(Number(r.available_capacity) - Number(withMode.available_capacity))).toBeLessThan(16 * MiB);
    }
    // A mode it names is still checked: node-local volumes serve no MULTI_NODE mode.
    await expect(
      t.controller.GetCapacity({ volume_capabilities: [{ mount: {}, access_mode: { mode: "MULTI_NODE_MULTI_WRITER" } }] }),
    ).rejects.toMatchObject({ code: 3 });
  });
});
