// Start-up repair row by row: a repair that does not end in time, a row that cannot be
// restored, a condition left by an earlier start. The driver's parts are built here around the
// same data and state dirs a real driver used, so reconcile() can be called with a deadline.
import { closeSync, existsSync, openSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isMountPoint, unmount } from "../native/mount.ts";
import { createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";
import { BackingStore } from "./backing.ts";
import type { Driver } from "./driver.ts";
import { CsiError } from "./errors.ts";
import { InFlight } from "./locks.ts";
import { NodeService } from "./node.ts";
import { reconcile } from "./reconcile.ts";
import { type StagingRow, type VolumeRow, VolumeStore } from "./state.ts";

let t: TestDriver;
let store: VolumeStore | undefined;

beforeEach(async () => {
  t = await createTestDriver(testPrefix());
  await t.start();
});

afterEach(async () => {
  store?.close();
  store = undefined;
  await t.cleanup();
});

/** Creates and stages a dir volume through the running driver; returns its id. */
async function stagedVolume(name: string): Promise<string> {
  const { volume } = await t.controller.CreateVolume({
    name,
    capacity_range: { required_bytes: String(16 * MiB) },
    volume_capabilities: [mountCap()],
  });
  await t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: t.path(name), volume_capability: mountCap() });
  return volume.volume_id;
}

function parts(): Driver {
  store = new VolumeStore(join(t.stateDir, "csi.db"));
  return {
    store,
    backing: new BackingStore(t.dataDir),
    locks: new InFlight(),
    nodeId: "test-node",
    driverName: "berth.csi.local",
    log: pino({ level: "silent" }),
    enforcement: "loop-filesystem",
    maxVolumesPerNode: 0,
  };
}

/** A node whose staging of one volume waits until the test lets it go. */
class HeldNode extends NodeService {
  release: () => void = () => {};
  private readonly gate = new Promise<void>((r) => {
    this.release = r;
  });
  constructor(
    d: Driver,
    private readonly heldId: string,
  ) {
    super(d);
  }
  override async applyStaging(v: VolumeRow, row: StagingRow): Promise<void> {
    if (v.id === this.heldId) await this.gate;
    return super.applyStaging(v, row);
  }
}

describe("start-up reconcile", () => {
  it("gives up on a repair past its deadline: the volume is abnormal and locked until it ends; the other rows are repaired", async () => {
    const slow = await stagedVolume("slow");
    const fine = await stagedVolume("fine");
    await t.stop();
    const d = parts();
    // A reboot took the mounts of both.
    for (const id of [slow, fine]) unmount(d.backing.dirMountPath(id), { detach: true });
    const node = new HeldNode(d, slow);

    const started = Date.now();
    const report = await reconcile(d, node, { rowTimeoutMs: 300 });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(report.abnormal).toEqual([expect.stringContaining(`${slow}: could not restore staging at ${t.path("slow")}:`)]);
    expect(report.abnormal[0]).toContain("did not finish within 300 ms");
    expect(report.repaired).toEqual([`staging ${fine}`]);
    expect(isMountPoint(d.backing.dirMountPath(fine))).toBe(true);
    expect(d.store.volume(slow)?.condition).toMatch(/did not finish within 300 ms/);
    expect(d.store.volume(fine)?.condition).toBe("");
    // The late repair still owns the volume: an RPC would get ABORTED.
    expect(() => d.locks.acquire([slow])).toThrow(CsiError);
    try {
      d.locks.acquire([slow]);
    } catch (e) {
      expect((e as CsiError).code).toBe(status.ABORTED);
    }

    node.release();
    for (let i = 0; i < 100 && !isMountPoint(d.backing.dirMountPath(slow)); i++) await new Promise((r) => setTimeout(r, 50));
    expect(isMountPoint(d.backing.dirMountPath(slow))).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
    d.locks.acquire([slow])(); // free again
    // Finished late but fine: the condition it had set is taken back.
    expect(d.store.volume(slow)?.condition).toBe("");

    // The next start finds it healthy.
    const again = await reconcile(d, new NodeService(d), { rowTimeoutMs: 5_000 });
    expect(again.abnormal).toEqual([]);
    expect(d.store.volume(slow)?.condition).toBe("");
  });

  it("removes an ephemeral volume whose unpublish died between dropping its publication and removing the volume", async () => {
    const target = t.path("pod-ephemeral");
    await t.node.NodePublishVolume({
      volume_id: "csi-crash-ephemeral",
      target_path: target,
      volume_capability: mountCap(),
      volume_context: { "csi.storage.k8s.io/ephemeral": "true", size: "16Mi" },
    });
    await t.stop();
    let d = parts();
    const v = d.store.volumes().find((x) => x.ephemeral);
    if (!v) throw new Error("no ephemeral volume row");
    const image = d.backing.imagePath(v.id);
    expect(d.backing.loopFor(image)).toBeDefined();
    expect(isMountPoint(d.backing.dirMountPath(v.id))).toBe(true);
    // What NodeUnpublishVolume had done when the driver died: the target unmounted and removed,
    // its publication row dropped; the volume's own mount, loop device, image and row remain.
    unmount(target, { detach: true });
    rmdirSync(target);
    d.store.deletePublication(v.id, target);
    store?.close();
    store = undefined;

    await t.start(); // start-up repair
    d = parts();
    expect(d.store.volume(v.id)).toBeUndefined();
    expect(existsSync(image)).toBe(false);
    expect(d.backing.loopFor(image)).toBeUndefined();
    expect(isMountPoint(d.backing.dirMountPath(v.id))).toBe(false);
  });

  it("finishes an ephemeral volume whose unpublish failed midway: by the retry, or by start-up repair", async () => {
    const ephemeral = { "csi.storage.k8s.io/ephemeral": "true", size: "16Mi" };
    const held: number[] = [];
    try {
      const rows: VolumeRow[] = [];
      for (const name of ["retried", "restarted"]) {
        await t.node.NodePublishVolume({
          volume_id: `csi-${name}`,
          target_path: t.path(name),
          volume_capability: mountCap(),
          volume_context: ephemeral,
        });
        const d = parts();
        const v = d.store.volumeByName(`ephemeral/csi-${name}`);
        store?.close();
        store = undefined;
        if (!v) throw new Error(`no row for ${name}`);
        rows.push(v);
        // A file open in the volume's own filesystem (not through the target): the target's
        // unmount goes through, the volume's filesystem cannot be unmounted.
        held.push(openSync(join(d.backing.dirDataPath(v.id), "open"), "w"));
        await expect(t.node.NodeUnpublishVolume({ volume_id: `csi-${name}`, target_path: t.path(name) })).rejects.toThrow(/busy/);
        expect(existsSync(t.path(name))).toBe(false);
      }
      for (const fd of held.splice(0)) closeSync(fd);

      // The CO retries the first; the driver restarts before the second is retried.
      await t.node.NodeUnpublishVolume({ volume_id: "csi-retried", target_path: t.path("retried") });
      await t.stop();
      await t.start();
      const d = parts();
      for (const v of rows) {
        const image = d.backing.imagePath(v.id);
        expect(d.store.volume(v.id), v.name).toBeUndefined();
        expect(existsSync(image), v.name).toBe(false);
        expect(d.backing.loopFor(image), v.name).toBeUndefined();
        expect(isMountPoint(d.backing.dirMountPath(v.id)), v.name).toBe(false);
      }
    } finally {
      for (const fd of held) closeSync(fd);
    }
  });

  it("marks a row it cannot vet or restore abnormal without touching its path, and goes on", async () => {
    const id = await stagedVolume("hostile");
    const target = t.path("pod");
    await t.node.NodePublishVolume({
      volume_id: id,
      staging_target_path: t.path("hostile"),
      target_path: target,
      volume_capability: mountCap(),
    });
    await t.stop();
    const d = parts();
    unmount(target, { detach: true });
    d.store.putPublication({
      volumeId: id,
      targetPath: "/sys/kernel/berth-test-target",
      accessType: "mount",
      mode: "SINGLE_NODE_WRITER",
      readOnly: false,
      mountFlags: [],
    });
    const report = await reconcile(d, new NodeService(d));
    expect(report.repaired).toEqual([`publication ${target}`]);
    expect(report.abnormal).toEqual([
      expect.stringMatching(
        /could not restore publication at \/sys\/kernel\/berth-test-target: target path: .* kernel's own tree/,
      ),
    ]);
    expect(isMountPoint(target)).toBe(true);
    expect(d.store.volume(id)?.condition).toContain("could not restore publication at /sys/kernel/berth-test-target:");
  });
});
