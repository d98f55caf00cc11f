// The Docker volume adapter's staging lifetime, on the real kernel (loop devices, ext4 mounts)
// without a Docker Engine: a volume stays staged after its last container's Unmount, is
// unstaged when it has stayed unused for the idle period, and a plugin restart (the process
// gone without unstaging, as after kill -9) starts that idle period again. Remove releases a
// staged volume at once; a volume with a caller is refused.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { isMountPoint } from "../../native/mount.ts";
import { testPrefix } from "../../testing/kernel.ts";
import { until } from "../../testing/poll.ts";
import { loopsTagged, makeScratch, mountsUnder, type Scratch } from "../../testing/storage.ts";
import { DockerPluginError, DockerVolumeService } from "./volumes.ts";

const IDLE_MS = 400;
const C1 = "a".repeat(64);
const C2 = "b".repeat(64);

let s: Scratch;
let svc: DockerVolumeService | undefined;

function open(idleUnstageMs: number): Promise<DockerVolumeService> {
  return DockerVolumeService.open({
    stateDir: s.path("csi"),
    dockerDir: s.path("dock"),
    nodeId: testPrefix(),
    idleUnstageMs,
    log: pino({ level: "silent" }),
  });
}

/** The volume's id, its image's loop devices and its mounts under the scratch dir. */
function kernelState(name: string) {
  const id = String(svc!.get(name).Status!.id);
  const image = join(s.path("csi"), "volumes", "images", `${id}.img`);
  return {
    id,
    image,
    loops: loopsTagged(image).map((l) => l.name),
    mounts: mountsUnder(s.dir).filter((m) => m.includes(id)),
    mountpoint: join(s.path("dock"), "mounts", id),
  };
}

beforeEach(() => {
  s = makeScratch();
});

afterEach(() => {
  svc?.close();
  svc = undefined;
  s.cleanup();
});

describe("Docker volumes stay staged while used now and then", () => {
  it("keeps the volume staged after the last Unmount and unstages it after the idle period", async () => {
    svc = await open(IDLE_MS);
    await svc.create("v", { size: "16M" });
    const at = await svc.mount("v", C1);
    expect(isMountPoint(at)).toBe(true);
    const first = kernelState("v");
    expect(first.loops).toHaveLength(1);
    await svc.unmount("v", C1);
    // Unpublished, still staged: the same loop device, the filesystem still mounted.
    const idle = kernelState("v");
    expect(isMountPoint(idle.mountpoint)).toBe(false);
    expect(idle.loops).toEqual(first.loops);
    expect(idle.mounts).not.toEqual([]);
    expect(svc.path("v")).toBe("");
    // A Mount within the idle period publishes the staged volume again, and keeps it.
    await svc.mount("v", C2);
    expect(kernelState("v").loops).toEqual(first.loops);
    await new Promise((r) => setTimeout(r, IDLE_MS * 2));
    expect(isMountPoint(at)).toBe(true);
    expect(kernelState("v").loops).toEqual(first.loops);
    await svc.unmount("v", C2);
    await until(
      () => kernelState("v"),
      (k) => k.loops.length === 0 && k.mounts.length === 0,
      "the idle volume to be unstaged",
      10_000,
      50,
    );
    // The next Mount stages it again.
    await svc.mount("v", C1);
    expect(kernelState("v").loops).toHaveLength(1);
    await svc.unmount("v", C1);
  });

  it("starts the idle period again after a restart that left an unused volume staged", async () => {
    svc = await open(60 * 60_000);
    await svc.create("r", { size: "16M" });
    await svc.mount("r", C1);
    await svc.unmount("r", C1);
    const before = kernelState("r");
    expect(before.loops).toHaveLength(1);
    // Gone without unstaging anything, as a killed plugin is.
    svc.close();
    svc = await open(IDLE_MS);
    const after = kernelState("r");
    expect(after.loops).toEqual(before.loops);
    expect(after.mounts).not.toEqual([]);
    await until(
      () => kernelState("r"),
      (k) => k.loops.length === 0 && k.mounts.length === 0,
      "the restored idle volume to be unstaged",
      10_000,
      50,
    );
  });

  it("unstages unused volumes when the plugin stops, and leaves published ones", async () => {
    svc = await open(60 * 60_000);
    await svc.create("idle", { size: "16M" });
    await svc.create("busy", { size: "16M" });
    await svc.mount("idle", C1);
    await svc.unmount("idle", C1);
    const busyAt = await svc.mount("busy", C2);
    await svc.unstageIdle();
    expect(kernelState("idle").mounts).toEqual([]);
    // The kernel lets a loop device go when its last opener (udev's probe too) closes it.
    await until(
      () => kernelState("idle").loops,
      (l) => l.length === 0,
      "the idle volume's loop device to be detached",
      10_000,
      50,
    );
    expect(isMountPoint(busyAt)).toBe(true);
    expect(kernelState("busy").loops).toHaveLength(1);
    await svc.unmount("busy", C2);
  });

  it("removes a staged volume no container uses at once, and refuses one a container uses", async () => {
    svc = await open(60 * 60_000);
    await svc.create("x", { size: "16M" });
    await svc.mount("x", C1);
    await expect(svc.remove("x")).rejects.toThrow(DockerPluginError);
    await expect(svc.remove("x")).rejects.toThrow(/in use by 1 container/);
    expect(kernelState("x").loops).toHaveLength(1);
    await svc.unmount("x", C1);
    const k = kernelState("x");
    expect(k.loops).toHaveLength(1);
    await svc.remove("x");
    expect(loopsTagged(k.image)).toEqual([]);
    expect(mountsUnder(s.dir).filter((m) => m.includes(k.id))).toEqual([]);
    expect(existsSync(k.image)).toBe(false);
    expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(k.id);
    expect(svc.list().map((v) => v.Name)).not.toContain("x");
  });
});
