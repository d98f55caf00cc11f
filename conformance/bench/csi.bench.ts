// CSI benchmark (`npm run bench:csi`, not a test):
//   node --import tsx conformance/bench/csi.bench.ts [--endpoint unix:///path.sock --pid PID]
//     [--iterations 20] [--volumes 1000]
// 1. For 64 MiB dir, raw block and ext4 block volumes: p50/p90 of create+stage+publish and of
//    unpublish+unstage+delete through the driver's gRPC endpoint, beside the same kernel work done
//    directly with the command-line tools in the same run (truncate, losetup, mkfs.ext4, mount …).
// 2. A group snapshot of 3 × 64 MiB ext4 (dir) volumes in use, each holding 16 MiB of data:
//    p50/p90 of CreateVolumeGroupSnapshot beside the same freeze + copy + thaw done by hand in
//    the same run (fsfreeze --freeze ×3, cp --reflink=auto --sparse=always ×3, fsfreeze
//    --unfreeze ×3), when the bench started the driver (it needs the driver's data dir).
// 3. The driver's resident memory (VmRSS) after creating 1,000 small dir volumes.
// Without --endpoint it starts berth's driver as a child process with temp dirs, and removes
// everything (volumes, mounts, loop devices, dirs) at the end or on SIGINT.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type BerthCsiProcess, startBerthCsi } from "../../testing/berth-csi-process.ts";
import { testPrefix } from "../../testing/kernel.ts";
import { type CsiClient as Client, CsiClient, type Volume, type VolumeCapability } from "../csi/client.ts";
import { forceUnmount, mountsUnder } from "../csi/kernel-view.ts";

const MiB = 1024 * 1024;
const ROOT = join(tmpdir(), `${testPrefix()}-csibench`);

interface Kind {
  label: string;
  params: Record<string, string>;
  capability: VolumeCapability;
  /** what the same work costs with the plain tools */
  direct: { up: (dir: string) => void; down: (dir: string) => void; what: string };
}

const sh = (cmd: string, args: string[]) =>
  execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
const loopOf = new Map<string, string>();

const KINDS: Kind[] = [
  {
    label: "dir 64 MiB",
    params: { kind: "dir" },
    capability: { mount: { fs_type: "", mount_flags: [] }, access_mode: { mode: "SINGLE_NODE_WRITER" } },
    direct: {
      what: "truncate+losetup+mkfs.ext4+mount / umount+losetup -d+rm",
      up: (d) => directFsUp(d),
      down: (d) => directFsDown(d),
    },
  },
  {
    label: "block raw 64 MiB",
    params: { kind: "block" },
    capability: { block: {}, access_mode: { mode: "SINGLE_NODE_WRITER" } },
    direct: {
      what: "truncate+losetup+bind-mount device / umount+losetup -d+rm",
      up: (d) => {
        mkdirSync(d, { recursive: true });
        sh("truncate", ["-s", `${64 * MiB}`, join(d, "img")]);
        const loop = sh("losetup", ["-f", "--show", join(d, "img")]);
        loopOf.set(d, loop);
        writeFileSync(join(d, "target"), "");
        sh("mount", ["--bind", loop, join(d, "target")]);
      },
      down: (d) => {
        sh("umount", [join(d, "target")]);
        sh("losetup", ["-d", loopOf.get(d)!]);
        loopOf.delete(d);
        rmSync(d, { recursive: true });
      },
    },
  },
  {
    label: "block ext4 64 MiB",
    params: { kind: "block" },
    capability: { mount: { fs_type: "ext4", mount_flags: [] }, access_mode: { mode: "SINGLE_NODE_WRITER" } },
    direct: {
      what: "truncate+losetup+mkfs.ext4+mount / umount+losetup -d+rm",
      up: (d) => directFsUp(d),
      down: (d) => directFsDown(d),
    },
  },
];

function directFsUp(d: string): void {
  mkdirSync(join(d, "target"), { recursive: true });
  sh("truncate", ["-s", `${64 * MiB}`, join(d, "img")]);
  const loop = sh("losetup", ["-f", "--show", join(d, "img")]);
  loopOf.set(d, loop);
  sh("mkfs.ext4", ["-q", "-F", loop]);
  sh("mount", [loop, join(d, "target")]);
}

function directFsDown(d: string): void {
  sh("umount", [join(d, "target")]);
  sh("losetup", ["-d", loopOf.get(d)!]);
  loopOf.delete(d);
  rmSync(d, { recursive: true });
}

function percentile(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
}

const ms = (n: number) => `${n.toFixed(1)} ms`;

/** Starts `berth csi` as a child process (its memory is read from /proc). */
async function startDriverChild(): Promise<{ endpoint: string; driver: BerthCsiProcess }> {
  const socket = join(ROOT, "csi.sock");
  const dataDir = join(ROOT, "data");
  const stateDir = join(ROOT, "state");
  mkdirSync(dataDir, { recursive: true });
  mkdirSync(stateDir, { recursive: true });
  const driver = await startBerthCsi({ socket, dataDir, stateDir, nodeId: "bench-node" });
  return { endpoint: `unix://${socket}`, driver };
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : Number.NaN;
}

class Tracker {
  readonly volumes = new Set<string>();
  readonly published = new Map<string, string>();
  readonly staged = new Map<string, string>();
  async release(client: Client): Promise<void> {
    for (const [t, v] of this.published)
      await client.call("Node", "NodeUnpublishVolume", { volume_id: v, target_path: t }).catch(() => {});
    for (const [s, v] of this.staged)
      await client.call("Node", "NodeUnstageVolume", { volume_id: v, staging_target_path: s }).catch(() => {});
    for (const v of this.volumes) await client.call("Controller", "DeleteVolume", { volume_id: v }).catch(() => {});
    this.published.clear();
    this.staged.clear();
    this.volumes.clear();
  }
}

async function benchKind(client: Client, kind: Kind, iterations: number, staged: boolean, track: Tracker) {
  const up: number[] = [];
  const down: number[] = [];
  const directUp: number[] = [];
  const directDown: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const dir = join(ROOT, `${kind.params.kind}-${kind.capability.block ? "raw" : "fs"}-${i}`);
    const staging = join(dir, "staging");
    const target = join(dir, "target");
    mkdirSync(staging, { recursive: true });
    let t0 = performance.now();
    const { volume } = await client.call<{ volume: Volume }>("Controller", "CreateVolume", {
      name: `bench-${kind.label.replaceAll(" ", "-")}-${i}-${Date.now()}`,
      capacity_range: { required_bytes: 64 * MiB },
      volume_capabilities: [kind.capability],
      parameters: kind.params,
    });
    track.volumes.add(volume.volume_id);
    if (staged) {
      track.staged.set(staging, volume.volume_id);
      await client.call("Node", "NodeStageVolume", {
        volume_id: volume.volume_id,
        staging_target_path: staging,
        volume_capability: kind.capability,
        volume_context: volume.volume_context,
      });
    }
    track.published.set(target, volume.volume_id);
    await client.call("Node", "NodePublishVolume", {
      volume_id: volume.volume_id,
      staging_target_path: staged ? staging : "",
      target_path: target,
      volume_capability: kind.capability,
      volume_context: volume.volume_context,
    });
    let t1 = performance.now();
    await client.call("Node", "NodeUnpublishVolume", { volume_id: volume.volume_id, target_path: target });
    track.published.delete(target);
    if (staged) {
      await client.call("Node", "NodeUnstageVolume", { volume_id: volume.volume_id, staging_target_path: staging });
      track.staged.delete(staging);
    }
    await client.call("Controller", "DeleteVolume", { volume_id: volume.volume_id });
    track.volumes.delete(volume.volume_id);
    let t2 = performance.now();
    up.push(t1 - t0);
    down.push(t2 - t1);
    rmSync(dir, { recursive: true, force: true });

    const direct = join(ROOT, `direct-${i}`);
    t0 = performance.now();
    kind.direct.up(direct);
    t1 = performance.now();
    kind.direct.down(direct);
    t2 = performance.now();
    directUp.push(t1 - t0);
    directDown.push(t2 - t1);
  }
  return { up, down, directUp, directDown };
}

const GROUP_SIZE = 3;
const GROUP_DATA_MIB = 16;

interface GroupSnapshotReply {
  group_snapshot: { group_snapshot_id: string; snapshots: { snapshot_id: string }[] };
}

async function benchGroupSnapshot(client: Client, iterations: number, dataDir: string | undefined, track: Tracker) {
  const capability = KINDS[0]!.capability;
  const volumes: Volume[] = [];
  for (let v = 0; v < GROUP_SIZE; v++) {
    const dir = join(ROOT, `group-${v}`);
    const staging = join(dir, "staging");
    const target = join(dir, "target");
    mkdirSync(staging, { recursive: true });
    const { volume } = await client.call<{ volume: Volume }>("Controller", "CreateVolume", {
      name: `bench-group-member-${v}-${Date.now()}`,
      capacity_range: { required_bytes: 64 * MiB },
      volume_capabilities: [capability],
      parameters: { kind: "dir" },
    });
    track.volumes.add(volume.volume_id);
    track.staged.set(staging, volume.volume_id);
    await client.call("Node", "NodeStageVolume", {
      volume_id: volume.volume_id,
      staging_target_path: staging,
      volume_capability: capability,
      volume_context: volume.volume_context,
    });
    track.published.set(target, volume.volume_id);
    await client.call("Node", "NodePublishVolume", {
      volume_id: volume.volume_id,
      staging_target_path: staging,
      target_path: target,
      volume_capability: capability,
      volume_context: volume.volume_context,
    });
    sh("dd", ["if=/dev/urandom", `of=${join(target, "data")}`, "bs=1M", `count=${GROUP_DATA_MIB}`, "conv=fsync", "status=none"]);
    volumes.push(volume);
  }
  const driver: number[] = [];
  const direct: number[] = [];
  const copies = join(ROOT, "group-direct");
  for (let i = 0; i < iterations; i++) {
    let t0 = performance.now();
    const { group_snapshot: g } = await client.call<GroupSnapshotReply>("GroupController", "CreateVolumeGroupSnapshot", {
      name: `bench-group-${i}-${Date.now()}`,
      source_volume_ids: volumes.map((v) => v.volume_id),
    });
    driver.push(performance.now() - t0);
    await client.call("GroupController", "DeleteVolumeGroupSnapshot", {
      group_snapshot_id: g.group_snapshot_id,
      snapshot_ids: g.snapshots.map((s) => s.snapshot_id),
    });
    if (!dataDir) continue;
    mkdirSync(copies, { recursive: true });
    const mounts = volumes.map((v) => join(dataDir, "mounts", v.volume_id));
    t0 = performance.now();
    const frozen: string[] = [];
    try {
      for (const m of mounts) {
        sh("fsfreeze", ["--freeze", m]);
        frozen.push(m);
      }
      for (const v of volumes) {
        sh("cp", ["--reflink=auto", "--sparse=always", join(dataDir, "images", `${v.volume_id}.img`), join(copies, v.volume_id)]);
      }
    } finally {
      for (const m of frozen) sh("fsfreeze", ["--unfreeze", m]);
    }
    direct.push(performance.now() - t0);
    rmSync(copies, { recursive: true, force: true });
  }
  return { driver, direct };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      endpoint: { type: "string" },
      pid: { type: "string" },
      iterations: { type: "string", default: "20" },
      volumes: { type: "string", default: "1000" },
    },
    strict: true,
  });
  const iterations = Number(values.iterations);
  const volumeCount = Number(values.volumes);
  if (!Number.isInteger(iterations) || iterations < 1)
    throw new Error(`--iterations ${values.iterations} is not a positive integer`);
  if (!Number.isInteger(volumeCount) || volumeCount < 0) throw new Error(`--volumes ${values.volumes} is not a whole number`);
  mkdirSync(ROOT, { recursive: true });

  let driver: BerthCsiProcess | undefined;
  let endpoint = values.endpoint;
  let pid = values.pid ? Number(values.pid) : undefined;
  if (!endpoint) {
    const started = await startDriverChild();
    driver = started.driver;
    endpoint = started.endpoint;
    pid = driver.child.pid;
  }
  const client = CsiClient.connect(endpoint);
  const track = new Tracker();
  const cleanup = async () => {
    await track.release(client);
    client.close();
    if (driver) await driver.stop();
    for (const m of mountsUnder(ROOT)) forceUnmount(m);
    for (const loop of loopOf.values()) {
      try {
        sh("losetup", ["-d", loop]);
      } catch {}
    }
    rmSync(ROOT, { recursive: true, force: true });
  };
  process.once("SIGINT", () => {
    process.stderr.write("\nSIGINT: cleaning up…\n");
    void cleanup().then(() => process.exit(130));
  });

  try {
    await client.waitReady(10_000);
    const nodeCaps = await client.call<{ capabilities: { rpc?: { type: string } | null }[] }>("Node", "NodeGetCapabilities", {});
    const staged = nodeCaps.capabilities.some((c) => c.rpc?.type === "STAGE_UNSTAGE_VOLUME");
    console.log(
      `CSI benchmark against ${endpoint}${driver ? " (berth, started by the bench)" : ""}, ${iterations} iterations per kind\n`,
    );
    console.log(
      "kind               | driver up p50 / p90      | direct up p50 / p90      | ratio | driver down p50 / p90    | direct down p50 / p90    | ratio",
    );
    for (const kind of KINDS) {
      const r = await benchKind(client, kind, iterations, staged, track);
      const cols = [
        kind.label.padEnd(18),
        `${ms(percentile(r.up, 50))} / ${ms(percentile(r.up, 90))}`.padEnd(24),
        `${ms(percentile(r.directUp, 50))} / ${ms(percentile(r.directUp, 90))}`.padEnd(24),
        `${(percentile(r.up, 50) / percentile(r.directUp, 50)).toFixed(2)}×`.padEnd(5),
        `${ms(percentile(r.down, 50))} / ${ms(percentile(r.down, 90))}`.padEnd(24),
        `${ms(percentile(r.directDown, 50))} / ${ms(percentile(r.directDown, 90))}`.padEnd(24),
        `${(percentile(r.down, 50) / percentile(r.directDown, 50)).toFixed(2)}×`,
      ];
      console.log(cols.join(" | "));
    }
    console.log("\ndirect baselines:");
    for (const kind of KINDS) console.log(`  ${kind.label}: ${kind.direct.what}`);
    console.log("up = CreateVolume+NodeStageVolume+NodePublishVolume; down = NodeUnpublishVolume+NodeUnstageVolume+DeleteVolume");

    const plugin = await client.call<{ capabilities: { service?: { type: string } | null }[] }>(
      "Identity",
      "GetPluginCapabilities",
      {},
    );
    if (plugin.capabilities.some((c) => c.service?.type === "GROUP_CONTROLLER_SERVICE")) {
      const g = await benchGroupSnapshot(client, iterations, driver ? join(ROOT, "data") : undefined, track);
      await track.release(client);
      const label = `\ngroup snapshot, ${GROUP_SIZE} × 64 MiB ext4 volumes in use (${GROUP_DATA_MIB} MiB data each):`;
      const driverCol = `CreateVolumeGroupSnapshot p50 / p90 ${ms(percentile(g.driver, 50))} / ${ms(percentile(g.driver, 90))}`;
      if (g.direct.length > 0) {
        const ratio = percentile(g.driver, 50) / percentile(g.direct, 50);
        console.log(
          `${label}\n  ${driverCol}\n  by hand (fsfreeze ×${GROUP_SIZE}, cp --reflink=auto --sparse=always ×${GROUP_SIZE}, ` +
            `fsfreeze --unfreeze ×${GROUP_SIZE}) p50 / p90 ${ms(percentile(g.direct, 50))} / ${ms(percentile(g.direct, 90))}` +
            `\n  ratio ${ratio.toFixed(2)}× (the driver also fsyncs each copy and records the group)`,
        );
      } else {
        console.log(
          `${label}\n  ${driverCol}\n  by hand: skipped (the driver's data dir is known only when the bench starts it)`,
        );
      }
    } else {
      console.log("\ngroup snapshot: skipped (GROUP_CONTROLLER_SERVICE not advertised)");
    }

    if (volumeCount > 0) {
      if (!pid) {
        console.log("\nRSS: skipped (give --pid of the driver process together with --endpoint)");
      } else {
        const before = rssKiB(pid);
        const t0 = performance.now();
        for (let i = 0; i < volumeCount; i++) {
          const { volume } = await client.call<{ volume: Volume }>("Controller", "CreateVolume", {
            name: `bench-rss-${i}-${Date.now()}`,
            capacity_range: { required_bytes: MiB },
            volume_capabilities: [KINDS[0]!.capability],
            parameters: { kind: "dir" },
          });
          track.volumes.add(volume.volume_id);
        }
        const createMs = performance.now() - t0;
        const after = rssKiB(pid);
        console.log(
          `\ndriver RSS: ${(before / 1024).toFixed(1)} MiB idle → ${(after / 1024).toFixed(1)} MiB with ${volumeCount} dir volumes ` +
            `(created in ${(createMs / 1000).toFixed(1)} s, ${(createMs / volumeCount).toFixed(2)} ms each)`,
        );
      }
    }
    return 0;
  } finally {
    await cleanup();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`csi bench: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
