// The order of checks in the node RPCs that ask "is volume X at path P?" (NodeGetVolumeStats,
// NodeExpandVolume): a missing field is INVALID_ARGUMENT; past that, an unknown volume, or a
// volume that is not at P (a relative path included), is NOT_FOUND — what kubelet and
// csi-sanity expect. Also the alpha capability switch of ControllerGetCapabilities.
import { mkdirSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";

const INVALID_ARGUMENT = 3;
const NOT_FOUND = 5;
const UNKNOWN_ID = "vol-00000000-0000-4000-8000-000000000000";

let t: TestDriver;

beforeEach(async () => {
  t = await createTestDriver(testPrefix());
});

afterEach(async () => {
  await t.cleanup();
});

describe("NodeGetVolumeStats and NodeExpandVolume look the volume up before judging the path", () => {
  it("answer NOT_FOUND for an unknown volume at a relative path, and for a known volume not at the path", async () => {
    await t.start();
    for (const rpc of ["NodeGetVolumeStats", "NodeExpandVolume"] as const) {
      await expect(t.node[rpc]({ volume_id: UNKNOWN_ID, volume_path: "some/path" })).rejects.toMatchObject({
        code: NOT_FOUND,
      });
      await expect(t.node[rpc]({ volume_id: "not-ours", volume_path: "some/path" })).rejects.toMatchObject({
        code: NOT_FOUND,
      });
    }

    const { volume } = await t.controller.CreateVolume({
      name: "stats",
      capacity_range: { required_bytes: String(16 * MiB) },
      volume_capabilities: [mountCap()],
    });
    const staging = t.path("staging");
    const target = t.path("target");
    mkdirSync(staging, { recursive: true });
    await t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: staging, volume_capability: mountCap() });
    await t.node.NodePublishVolume({
      volume_id: volume.volume_id,
      staging_target_path: staging,
      target_path: target,
      volume_capability: mountCap(),
    });
    try {
      for (const rpc of ["NodeGetVolumeStats", "NodeExpandVolume"] as const) {
        for (const elsewhere of ["some/path", `${target}/../target`, t.path("elsewhere")]) {
          await expect(t.node[rpc]({ volume_id: volume.volume_id, volume_path: elsewhere })).rejects.toMatchObject({
            code: NOT_FOUND,
          });
        }
      }
      // The volume at its own path still answers.
      const stats = await t.node.NodeGetVolumeStats({ volume_id: volume.volume_id, volume_path: target });
      expect(Number(stats.usage[0]!.total)).toBeGreaterThan(0);
      const trailing = await t.node.NodeGetVolumeStats({ volume_id: volume.volume_id, volume_path: `${target}/` });
      expect(trailing.usage[0]!.total).toBe(stats.usage[0]!.total);
    } finally {
      await t.node.NodeUnpublishVolume({ volume_id: volume.volume_id, target_path: target });
      await t.node.NodeUnstageVolume({ volume_id: volume.volume_id, staging_target_path: staging });
    }
  });

  it("still answer INVALID_ARGUMENT for a missing or malformed field, before any lookup", async () => {
    await t.start();
    for (const rpc of ["NodeGetVolumeStats", "NodeExpandVolume"] as const) {
      await expect(t.node[rpc]({ volume_id: "", volume_path: "/x" })).rejects.toMatchObject({ code: INVALID_ARGUMENT });
      await expect(t.node[rpc]({ volume_id: UNKNOWN_ID, volume_path: "" })).rejects.toMatchObject({
        code: INVALID_ARGUMENT,
      });
      await expect(t.node[rpc]({ volume_id: UNKNOWN_ID, volume_path: "/a\u0001b" })).rejects.toMatchObject({
        code: INVALID_ARGUMENT,
      });
      await expect(t.node[rpc]({ volume_id: UNKNOWN_ID, volume_path: `/${"a".repeat(5000)}` })).rejects.toMatchObject({
        code: INVALID_ARGUMENT,
      });
    }
  });
});

describe("alpha controller capabilities", () => {
  const types = async () =>
    (await t.controller.ControllerGetCapabilities({})).capabilities.map((c: { rpc: { type: string } }) => c.rpc.type);

  it("GET_SNAPSHOT is not advertised by default; GetSnapshot still answers", async () => {
    await t.start();
    const advertised = await types();
    expect(advertised).not.toContain("GET_SNAPSHOT");
    // What the released sidecars know is still there.
    expect(advertised).toEqual(expect.arrayContaining(["CREATE_DELETE_SNAPSHOT", "GET_VOLUME", "SINGLE_NODE_MULTI_WRITER"]));
    await expect(t.controller.GetSnapshot({ snapshot_id: "snap-nope" })).rejects.toMatchObject({ code: NOT_FOUND });
  });

  it("is advertised with alphaCapabilities (berth csi --enable-alpha-capabilities)", async () => {
    await t.start({ alphaCapabilities: true });
    expect(await types()).toContain("GET_SNAPSHOT");
  });
});
