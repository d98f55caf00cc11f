// SIGKILL of the CSI driver (its whole process group, tools included) at random moments of a
// workload: volumes created, staged, published, unpublished, unstaged and deleted by several
// callers at once. After every kill the driver must start again (its start-up repair never
// hangs or stops it), answer Probe, keep a state database that passes integrity_check, and
// still serve the file written on a long-lived volume before the first kill. At the end, the
// CO's own clean-up through the API (unpublish, unstage, delete everything the driver lists)
// leaves no image, row, mount or loop device behind, even with a mount namespace made by another
// program before it holding copies of the mounts (they are unmounted there too).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { mountsUnder } from "../csi/kernel-view.ts";
import { DriverProcess, MiB, mountCap } from "./csi-driver.ts";

const TRIALS = 10;
const CALLERS = 3;

function integrity(d: DriverProcess): string[] {
  const db = new Database(join(d.stateDir, "csi.db"), { readonly: true, fileMustExist: true });
  try {
    return (db.pragma("integrity_check") as { integrity_check: string }[]).map((r) => r.integrity_check);
  } finally {
    db.close();
  }
}

function loopsUnder(root: string): string[] {
  const out = execFileSync("losetup", ["-J", "-l"], { encoding: "utf8" }).trim();
  if (!out) return [];
  return (JSON.parse(out) as { loopdevices: { name: string; "back-file": string | null }[] }).loopdevices
    .filter((l) => (l["back-file"] ?? "").startsWith(`${root}/`))
    .map((l) => `${l.name} ${l["back-file"]}`);
}

/** A process in a new mount namespace whose mounts are slaves of ours (unshare -m --propagation slave). */
async function otherNamespace(): Promise<ChildProcess> {
  const child = spawn("unshare", ["-m", "--propagation", "slave", "sleep", "600"], { stdio: "ignore" });
  const ours = readlinkSync("/proc/self/ns/mnt");
  for (let i = 0; i < 200; i++) {
    try {
      if (readlinkSync(`/proc/${child.pid}/ns/mnt`) !== ours) return child;
    } catch {
      // not started yet
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error("unshare did not make its mount namespace");
}

describe("SIGKILL of the CSI driver under load", () => {
  const d = new DriverProcess(testPrefix());
  let sleeper: ChildProcess | undefined;
  afterAll(async () => {
    // Killed by a signal, a child's exitCode stays null: its signalCode says it is gone.
    if (sleeper && sleeper.exitCode === null && sleeper.signalCode === null) {
      const gone = new Promise((r) => sleeper?.once("exit", r));
      sleeper.kill("SIGKILL");
      await gone;
    }
    await d.cleanup();
  });

  it(`${TRIALS} kills at random moments; every restart serves; the CO's clean-up leaves nothing`, {
    timeout: 300_000,
  }, async () => {
    await d.start();
    // The long-lived volume: its data must survive every kill.
    const { volume: keeper } = await d.call<{ volume: { volume_id: string } }>("Controller", "CreateVolume", {
      name: "keeper",
      capacity_range: { required_bytes: 16 * MiB },
      volume_capabilities: [mountCap()],
    });
    const keeperStaging = d.path("keeper-staging");
    const keeperTarget = d.path("keeper-target");
    mkdirSync(keeperStaging);
    await d.call("Node", "NodeStageVolume", {
      volume_id: keeper.volume_id,
      staging_target_path: keeperStaging,
      volume_capability: mountCap(),
    });
    await d.call("Node", "NodePublishVolume", {
      volume_id: keeper.volume_id,
      staging_target_path: keeperStaging,
      target_path: keeperTarget,
      volume_capability: mountCap(),
    });
    writeFileSync(join(keeperTarget, "data"), "kept");
    execFileSync("sync");

    let seq = 0;
    /** One caller's volume life cycle, over and over until the driver dies. */
    const caller = async (c: number) => {
      for (;;) {
        const n = seq++;
        const fsType = n % 2 === 0 ? "" : "ext4";
        const { volume } = await d.call<{ volume: { volume_id: string } }>("Controller", "CreateVolume", {
          name: `v${c}-${n}`,
          capacity_range: { required_bytes: 16 * MiB },
          volume_capabilities: [mountCap(fsType)],
          parameters: { kind: fsType ? "block" : "dir" },
        });
        const staging = d.path(`s${n}`);
        const target = d.path(`t${n}`);
        mkdirSync(staging, { recursive: true });
        const cap = mountCap(fsType);
        await d.call("Node", "NodeStageVolume", {
          volume_id: volume.volume_id,
          staging_target_path: staging,
          volume_capability: cap,
        });
        await d.call("Node", "NodePublishVolume", {
          volume_id: volume.volume_id,
          staging_target_path: staging,
          target_path: target,
          volume_capability: cap,
        });
        if (n % 3 === 0) continue; // some stay published, for the next start to find
        await d.call("Node", "NodeUnpublishVolume", { volume_id: volume.volume_id, target_path: target });
        await d.call("Node", "NodeUnstageVolume", { volume_id: volume.volume_id, staging_target_path: staging });
        await d.call("Controller", "DeleteVolume", { volume_id: volume.volume_id });
      }
    };

    for (let trial = 0; trial < TRIALS; trial++) {
      const callers = Array.from({ length: CALLERS }, (_, c) => caller(c).catch(() => {}));
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 1500));
      await d.kill();
      await Promise.all(callers);

      await d.start(60_000);
      expect(await d.alive(), `trial ${trial}: Probe after restart`).toBe(true);
      expect(integrity(d), `trial ${trial}`).toEqual(["ok"]);
      expect(readFileSync(join(keeperTarget, "data"), "utf8"), `trial ${trial}`).toBe("kept");
    }

    // Another program makes its own mount namespace (as container runtimes and `ip netns exec`
    // do): it holds copies of every mount until the unmounts reach it. (Made only now: it also
    // holds copies of everyone else's private mounts while it lives.)
    sleeper = await otherNamespace();
    // The CO cleans up everything the driver knows, by the paths it recorded.
    const list = await d.call<{ entries: { volume: { volume_id: string } }[] }>("Controller", "ListVolumes", {});
    const publications = d.rows("publications") as { volume_id: string; target_path: string }[];
    const stagings = d.rows("stagings") as { volume_id: string; staging_path: string }[];
    expect(list.entries.length).toBeGreaterThan(1);
    for (const p of publications)
      await d.call("Node", "NodeUnpublishVolume", { volume_id: p.volume_id, target_path: p.target_path });
    for (const s of stagings)
      await d.call("Node", "NodeUnstageVolume", { volume_id: s.volume_id, staging_target_path: s.staging_path });
    for (const e of list.entries) await d.call("Controller", "DeleteVolume", { volume_id: e.volume.volume_id });

    expect(d.rows("volumes")).toEqual([]);
    expect(readdirSync(join(d.dataDir, "images"))).toEqual([]);
    expect(loopsUnder(d.root)).toEqual([]);
    const own = [join(d.dataDir, "mounts"), join(d.root, "kubelet")]; // the driver's and the CO's shared binds
    expect(mountsUnder(d.root).filter((m) => !own.includes(m))).toEqual([]);
    sleeper.kill("SIGKILL");
    await d.kill();
    expect(integrity(d)).toEqual(["ok"]);
  });
});
