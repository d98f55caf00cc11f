// Controller and node semantics the spec pins down, and hostile input.
import { existsSync, mkdirSync, readdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { blockCap, createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";

const INVALID_ARGUMENT = 3;
const NOT_FOUND = 5;
const ALREADY_EXISTS = 6;
const FAILED_PRECONDITION = 9;
const ABORTED = 10;
const OUT_OF_RANGE = 11;

let t: TestDriver;

beforeEach(async () => {
  t = await createTestDriver(testPrefix());
  await t.start();
});

afterEach(async () => {
  await t.cleanup();
});

const small = { required_bytes: String(16 * MiB) };

describe("CreateVolume", () => {
  it("is idempotent on name and refuses incompatible repeats with ALREADY_EXISTS", async () => {
    const req = { name: "pvc-1", capacity_range: small, volume_capabilities: [mountCap()] };
    const a = await t.controller.CreateVolume(req);
    const b = await t.controller.CreateVolume(req);
    expect(b.volume.volume_id).toBe(a.volume.volume_id);
    expect(b.volume.accessible_topology[0]!.segments["topology.berth/node"]).toBe("test-node");
    await expect(
      t.controller.CreateVolume({ ...req, capacity_range: { required_bytes: String(32 * MiB) } }),
    ).rejects.toMatchObject({
      code: ALREADY_EXISTS,
    });
    await expect(t.controller.CreateVolume({ ...req, parameters: { kind: "block" } })).rejects.toMatchObject({
      code: ALREADY_EXISTS,
    });
    await expect(t.controller.CreateVolume({ ...req, volume_capabilities: [mountCap("xfs")] })).rejects.toMatchObject({
      code: ALREADY_EXISTS,
    });
    expect(readdirSync(join(t.dataDir, "images"))).toHaveLength(1);
  });

  it("honours capacity_range and answers OUT_OF_RANGE when nothing fits", async () => {
    const { volume } = await t.controller.CreateVolume({ name: "d", volume_capabilities: [mountCap()] });
    expect(volume.capacity_bytes).toBe(String(1024 * MiB));
    await expect(
      t.controller.CreateVolume({
        name: "tiny-xfs",
        capacity_range: { limit_bytes: String(100 * MiB) },
        volume_capabilities: [mountCap("xfs")],
        parameters: { kind: "block" },
      }),
    ).rejects.toMatchObject({ code: OUT_OF_RANGE });
    await expect(
      t.controller.CreateVolume({ name: "neg", capacity_range: { required_bytes: "-1" }, volume_capabilities: [mountCap()] }),
    ).rejects.toMatchObject({ code: INVALID_ARGUMENT });
  });

  it("rejects hostile and malformed arguments before any lookup", async () => {
    const bad: [string, object][] = [
      ["129-byte name", { name: "x".repeat(129), volume_capabilities: [mountCap()] }],
      ["control characters", { name: "a\u0001b", volume_capabilities: [mountCap()] }],
      ["no capabilities", { name: "n" }],
      ["multi-node mode", { name: "n", volume_capabilities: [mountCap("", "MULTI_NODE_MULTI_WRITER")] }],
      ["unknown fs", { name: "n", volume_capabilities: [mountCap("btrfs")] }],
      ["block access on dir", { name: "n", volume_capabilities: [blockCap()] }],
      ["unknown kind", { name: "n", volume_capabilities: [mountCap()], parameters: { kind: "../../etc" } }],
      ["unknown parameter", { name: "n", volume_capabilities: [mountCap()], parameters: { path: "/etc" } }],
    ];
    for (const [why, req] of bad) {
      await expect(t.controller.CreateVolume(req), why).rejects.toMatchObject({ code: INVALID_ARGUMENT });
    }
    // A 128-byte name with traversal characters is just a name: the volume id and files are ours.
    const { volume } = await t.controller.CreateVolume({
      name: `../../${"y".repeat(122)}`,
      capacity_range: small,
      volume_capabilities: [mountCap()],
    });
    expect(volume.volume_id).toMatch(/^vol-[0-9a-f-]{36}$/);
    expect(readdirSync(join(t.dataDir, "images"))).toEqual([`${volume.volume_id}.img`]);
  });

  it("creates exactly one volume when the same name races", async () => {
    const req = { name: "race", capacity_range: small, volume_capabilities: [mountCap()] };
    const results = await Promise.allSettled(Array.from({ length: 6 }, () => t.controller.CreateVolume(req)));
    const ok = results.filter((r) => r.status === "fulfilled") as PromiseFulfilledResult<
      Awaited<ReturnType<typeof t.controller.CreateVolume>>
    >[];
    const failed = results.filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    expect(ok.length).toBeGreaterThanOrEqual(1);
    for (const f of failed) expect(f.reason.code).toBe(ABORTED);
    expect(new Set(ok.map((r) => r.value.volume.volume_id)).size).toBe(1);
    expect(readdirSync(join(t.dataDir, "images"))).toHaveLength(1);
  });

  it("answers NOT_FOUND for a missing clone source", async () => {
    await expect(
      t.controller.CreateVolume({
        name: "c",
        volume_capabilities: [mountCap()],
        volume_content_source: { volume: { volume_id: "vol-00000000-0000-0000-0000-000000000000" } },
      }),
    ).rejects.toMatchObject({ code: NOT_FOUND });
  });
});

describe("volume management", () => {
  it("DeleteVolume: unknown id is OK, staged volume is FAILED_PRECONDITION", async () => {
    await t.controller.DeleteVolume({ volume_id: "vol-00000000-0000-0000-0000-000000000000" });
    await t.controller.DeleteVolume({ volume_id: "../../etc/passwd" });
    const cap = mountCap();
    const { volume } = await t.controller.CreateVolume({ name: "v", capacity_range: small, volume_capabilities: [cap] });
    const staging = t.path("stage");
    mkdirSync(staging);
    await t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: staging, volume_capability: cap });
    await expect(t.controller.DeleteVolume({ volume_id: volume.volume_id })).rejects.toMatchObject({ code: FAILED_PRECONDITION });
    await t.node.NodeUnstageVolume({ volume_id: volume.volume_id, staging_target_path: staging });
    await t.controller.DeleteVolume({ volume_id: volume.volume_id });
    await expect(t.controller.ControllerGetVolume({ volume_id: volume.volume_id })).rejects.toMatchObject({ code: NOT_FOUND });
  });

  it("ValidateVolumeCapabilities confirms only what the volume supports", async () => {
    const { volume } = await t.controller.CreateVolume({ name: "v", capacity_range: small, volume_capabilities: [mountCap()] });
    const ok = await t.controller.ValidateVolumeCapabilities({ volume_id: volume.volume_id, volume_capabilities: [mountCap()] });
    expect(ok.confirmed.volume_capabilities).toHaveLength(1);
    const no = await t.controller.ValidateVolumeCapabilities({ volume_id: volume.volume_id, volume_capabilities: [blockCap()] });
    expect(no.confirmed).toBeNull();
    expect(no.message).not.toBe("");
    const multi = await t.controller.ValidateVolumeCapabilities({
      volume_id: volume.volume_id,
      volume_capabilities: [mountCap("", "MULTI_NODE_MULTI_WRITER")],
    });
    expect(multi.confirmed).toBeNull();
    await expect(
      t.controller.ValidateVolumeCapabilities({
        volume_id: "vol-00000000-0000-0000-0000-000000000000",
        volume_capabilities: [mountCap()],
      }),
    ).rejects.toMatchObject({ code: NOT_FOUND });
  });

  it("ListVolumes pages with opaque tokens and refuses forged ones", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push(
        (await t.controller.CreateVolume({ name: `v${i}`, capacity_range: small, volume_capabilities: [mountCap()] })).volume
          .volume_id,
      );
    }
    const seen: string[] = [];
    let token = "";
    do {
      const page = await t.controller.ListVolumes({ max_entries: 2, starting_token: token });
      expect(page.entries.length).toBeLessThanOrEqual(2);
      for (const e of page.entries) {
        seen.push(e.volume.volume_id);
        expect(e.status.volume_condition.abnormal).toBe(false);
      }
      token = page.next_token;
    } while (token);
    expect(seen.sort()).toEqual(ids.sort());
    await expect(t.controller.ListVolumes({ starting_token: "12" })).rejects.toMatchObject({ code: ABORTED });
  });

  it("ControllerGetVolume reports an abnormal condition when the backing file is gone", async () => {
    const { rmSync } = await import("node:fs");
    const { volume } = await t.controller.CreateVolume({ name: "v", capacity_range: small, volume_capabilities: [mountCap()] });
    rmSync(join(t.dataDir, "images", `${volume.volume_id}.img`));
    const got = await t.controller.ControllerGetVolume({ volume_id: volume.volume_id });
    expect(got.status.volume_condition.abnormal).toBe(true);
    expect(got.status.volume_condition.message).toMatch(/missing/);
  });

  it("answers ABORTED to the loser of two concurrent operations on one volume", async () => {
    const { volume } = await t.controller.CreateVolume({
      name: "v",
      capacity_range: { required_bytes: String(64 * MiB) },
      volume_capabilities: [mountCap()],
    });
    const results = await Promise.allSettled([
      t.controller.CreateSnapshot({ source_volume_id: volume.volume_id, name: "s1" }),
      t.controller.CreateSnapshot({ source_volume_id: volume.volume_id, name: "s2" }),
      t.controller.ControllerExpandVolume({ volume_id: volume.volume_id, capacity_range: { required_bytes: String(128 * MiB) } }),
    ]);
    const rejected = results.filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    expect(rejected.length).toBeGreaterThanOrEqual(1);
    for (const r of rejected) expect(r.reason.code).toBe(ABORTED);
  });
});

describe("node paths", () => {
  it("refuses relative, traversing and symlinked target paths", async () => {
    const cap = mountCap();
    const { volume } = await t.controller.CreateVolume({ name: "v", capacity_range: small, volume_capabilities: [cap] });
    const staging = t.path("stage");
    mkdirSync(staging);
    await t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: staging, volume_capability: cap });
    const outside = t.path("outside");
    mkdirSync(outside);
    const link = t.path("link");
    symlinkSync(outside, link);
    const targets = ["relative/target", `${t.root}/kubelet/../kubelet/pod`, join(link, "pod"), link, ""];
    for (const target of targets) {
      await expect(
        t.node.NodePublishVolume({
          volume_id: volume.volume_id,
          staging_target_path: staging,
          target_path: target,
          volume_capability: cap,
        }),
        target,
      ).rejects.toMatchObject({ code: INVALID_ARGUMENT });
    }
    expect(readdirSync(outside)).toEqual([]);
    await expect(
      t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: "stage", volume_capability: cap }),
    ).rejects.toMatchObject({ code: INVALID_ARGUMENT });
    await expect(
      t.node.NodeStageVolume({ volume_id: "vol-../../x", staging_target_path: staging, volume_capability: cap }),
    ).rejects.toMatchObject({ code: NOT_FOUND });
    await t.node.NodeUnstageVolume({ volume_id: volume.volume_id, staging_target_path: staging });
  });

  it("publish without stage is FAILED_PRECONDITION; stage elsewhere is ALREADY_EXISTS", async () => {
    const cap = blockCap();
    const { volume } = await t.controller.CreateVolume({
      name: "b",
      capacity_range: small,
      volume_capabilities: [cap],
      parameters: { kind: "block" },
    });
    const staging = t.path("stage");
    mkdirSync(staging);
    await expect(
      t.node.NodePublishVolume({
        volume_id: volume.volume_id,
        staging_target_path: staging,
        target_path: t.path("pod"),
        volume_capability: cap,
      }),
    ).rejects.toMatchObject({ code: FAILED_PRECONDITION });
    await t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: staging, volume_capability: cap });
    const other = t.path("stage2");
    mkdirSync(other);
    await expect(
      t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: other, volume_capability: cap }),
    ).rejects.toMatchObject({ code: ALREADY_EXISTS });
    // Mount access on a raw-only volume is not something it supports.
    await expect(
      t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: staging, volume_capability: mountCap() }),
    ).rejects.toMatchObject({ code: FAILED_PRECONDITION });
    await t.node.NodeUnstageVolume({ volume_id: volume.volume_id, staging_target_path: staging });
  });

  it("ephemeral inline volumes live from publish to unpublish", async () => {
    const target = t.path("pod-ephemeral");
    const req = {
      volume_id: "csi-4f1c2a",
      target_path: target,
      volume_capability: mountCap(),
      volume_context: { "csi.storage.k8s.io/ephemeral": "true", size: "32Mi" },
    };
    await t.node.NodePublishVolume(req);
    await t.node.NodePublishVolume(req);
    const stats = await t.node.NodeGetVolumeStats({ volume_id: "csi-4f1c2a", volume_path: target });
    const total = Number(stats.usage.find((u) => u.unit === "BYTES")!.total);
    expect(total).toBeGreaterThan(24 * MiB);
    expect(total).toBeLessThanOrEqual(32 * MiB);
    const listed = await t.controller.ListVolumes({});
    expect(listed.entries).toHaveLength(0);
    await t.node.NodeUnpublishVolume({ volume_id: "csi-4f1c2a", target_path: target });
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(join(t.dataDir, "images"))).toEqual([]);
  });
});
