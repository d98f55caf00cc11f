// The data dir's mounts dir as an rshared mount, read back from /proc/<pid>/mountinfo: made at start, not
// stacked by a restart, kept while volumes are mounted on it, gone after a stop without them;
// and what it is for: an unstage reaches a mount namespace another program made meanwhile.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { readFileSync, readlinkSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type MountInfo, mountsAt, parseMountInfo, readMountInfo } from "../native/mount.ts";
import { createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";

let t: TestDriver;
let sleeper: ChildProcess | undefined;

beforeEach(async () => {
  t = await createTestDriver(testPrefix());
});

afterEach(async () => {
  if (sleeper?.exitCode === null) {
    const gone = new Promise((r) => sleeper?.once("exit", r));
    sleeper.kill("SIGKILL");
    await gone;
  }
  sleeper = undefined;
  await t.cleanup();
});

/** Where the driver mounts volumes' filesystems: the dir it makes shared. */
const mountsDir = () => `${t.dataDir}/mounts`;
const shared = (m: MountInfo | undefined) => m?.optionalFields.some((f) => f.startsWith("shared:")) ?? false;

async function stagedVolume(name: string): Promise<string> {
  const { volume } = await t.controller.CreateVolume({
    name,
    capacity_range: { required_bytes: String(16 * MiB) },
    volume_capabilities: [mountCap()],
  });
  await t.node.NodeStageVolume({ volume_id: volume.volume_id, staging_target_path: t.path(name), volume_capability: mountCap() });
  return volume.volume_id;
}

function loopsOf(volumeId: string): string[] {
  const out = execFileSync("losetup", ["-J", "-l"], { encoding: "utf8" }).trim();
  if (!out) return [];
  return (JSON.parse(out) as { loopdevices: { name: string; "back-file": string | null }[] }).loopdevices
    .filter((l) => (l["back-file"] ?? "").includes(volumeId))
    .map((l) => l.name);
}

describe("mount propagation of the data dir's mounts dir", () => {
  it("is an rshared mount after start, once however often the driver starts, and kept while volumes are mounted", async () => {
    await t.start();
    expect(shared(mountsAt(mountsDir())[0])).toBe(true);
    await t.stop();
    // A driver that bound the dir and has nothing mounted below it leaves the host as it was.
    expect(mountsAt(mountsDir())).toEqual([]);

    await t.start();
    const at = mountsAt(mountsDir());
    expect(at).toHaveLength(1);
    expect(shared(at[0])).toBe(true);

    const id = await stagedVolume("shared");
    const volumeMount = readMountInfo().find((m) => m.mountPoint === `${mountsDir()}/${id}`);
    expect(volumeMount?.fsType).toBe("ext4");
    expect(shared(volumeMount)).toBe(true);

    // Stop and start with the volume mounted: nothing stacked, nothing lost.
    await t.stop();
    expect(mountsAt(mountsDir())).toHaveLength(1);
    expect(mountsAt(`${mountsDir()}/${id}`)).toHaveLength(1);
    await t.start();
    expect(mountsAt(mountsDir())).toHaveLength(1);
    expect(shared(mountsAt(mountsDir())[0])).toBe(true);
    const target = t.path("pod");
    await t.node.NodePublishVolume({
      volume_id: id,
      staging_target_path: t.path("shared"),
      target_path: target,
      volume_capability: mountCap(),
    });
    expect(mountsAt(target)).toHaveLength(1);

    await t.node.NodeUnpublishVolume({ volume_id: id, target_path: target });
    await t.node.NodeUnstageVolume({ volume_id: id, staging_target_path: t.path("shared") });
    await t.controller.DeleteVolume({ volume_id: id });
    await t.stop();
    // Bound by an earlier driver, the shared mount stays (as kubelet's does) and harms nothing.
    expect(mountsAt(mountsDir())).toHaveLength(1);
    await t.start();
    expect(mountsAt(mountsDir())).toHaveLength(1);
    expect((await t.identity.Probe({})).ready.value).toBe(true);
  });

  it("an unstage reaches a mount namespace created while the volume was mounted; the loop device goes", async () => {
    await t.start();
    const id = await stagedVolume("reach");
    const mountPoint = `${mountsDir()}/${id}`;
    expect(loopsOf(id)).toHaveLength(1);
    // Another program's mount namespace, as systemd services and container runtimes make them.
    sleeper = spawn("unshare", ["-m", "--propagation", "slave", "sleep", "60"], { stdio: "ignore" });
    const theirs = () => parseMountInfo(readFileSync(`/proc/${sleeper?.pid}/mountinfo`, "utf8"));
    const ours = readlinkSync("/proc/self/ns/mnt");
    const unshared = () => {
      try {
        return readlinkSync(`/proc/${sleeper?.pid}/ns/mnt`) !== ours;
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 100 && !unshared(); i++) await new Promise((r) => setTimeout(r, 20));
    expect(unshared()).toBe(true);
    expect(theirs().some((m) => m.mountPoint === mountPoint)).toBe(true);

    await t.node.NodeUnstageVolume({ volume_id: id, staging_target_path: t.path("reach") });
    expect(theirs().some((m) => m.mountPoint === mountPoint)).toBe(false);
    expect(loopsOf(id)).toEqual([]);
  });
});
