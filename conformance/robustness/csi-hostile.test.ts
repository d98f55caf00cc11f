// Hostile staging and target paths, from outside: the CSI driver runs as its own process
// (`berth csi`) and is reached only through its gRPC socket, so a driver that hangs shows up
// as a call past its deadline, never as a hung test run. Each case asserts the gRPC code, a
// message without a stack trace, that the driver still answers Probe right after, and that
// nothing was recorded (state database, read-only), created or mounted at the hostile path.
// The last cases write a hostile row straight into the state database, as a crash after the
// row was written would leave it, and start the driver on it.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmdirSync, rmSync, statSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { sh, testPrefix } from "../../testing/kernel.ts";
import { CsiCallError } from "../csi/client.ts";
import { mountAt } from "../csi/kernel-view.ts";
import { DriverProcess, MiB, mountCap, REPO } from "./csi-driver.ts";

/** Anything the driver may have made at a hostile path outside the test dir: unmounted and removed. */
function removeStray(path: string): void {
  for (let i = 0; i < 4 && mountAt(path); i++) sh("umount", ["-l", path]);
  try {
    rmdirSync(path);
  } catch {
    try {
      rmSync(path, { force: true });
    } catch {
      // not ours to remove, or not there
    }
  }
}

async function expectCode(call: Promise<unknown>, code: string, message?: RegExp): Promise<CsiCallError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "the call must fail").toBeInstanceOf(CsiCallError);
  const e = err as CsiCallError;
  expect({ code: e.code, message: e.statusMessage }).toMatchObject({ code, ...(message ? { message } : {}) });
  expect(e.statusMessage).not.toMatch(/\n\s+at /); // no stack trace
  return e;
}

/** Creates a 16 MiB volume of `kind` for mount access with `fsType`; returns its id. */
async function createVolume(d: DriverProcess, name: string, kind: string, fsType = ""): Promise<string> {
  const { volume } = await d.call<{ volume: { volume_id: string } }>("Controller", "CreateVolume", {
    name,
    capacity_range: { required_bytes: 16 * MiB },
    volume_capabilities: [mountCap(fsType)],
    parameters: { kind },
  });
  return volume.volume_id;
}

function stage(d: DriverProcess, volume: string, staging: string, fsType = ""): Promise<unknown> {
  return d.call("Node", "NodeStageVolume", {
    volume_id: volume,
    staging_target_path: staging,
    volume_capability: mountCap(fsType),
  });
}

function publish(d: DriverProcess, volume: string, staging: string, target: string): Promise<unknown> {
  return d.call("Node", "NodePublishVolume", {
    volume_id: volume,
    staging_target_path: staging,
    target_path: target,
    volume_capability: mountCap(),
  });
}

/** Neither a publication nor a staging at `path` in the state database. */
function expectNotRecorded(d: DriverProcess, path: string): void {
  expect(d.rows("publications").map((r) => r.target_path)).not.toContain(path);
  expect(d.rows("stagings").map((r) => r.staging_path)).not.toContain(path);
}

/** The driver under test, a staged dir volume (publish cases) and an unstaged block+ext4 volume (stage cases). */
interface Scene {
  d: DriverProcess;
  dirVolume: string;
  dirStaging: string;
  blockVolume: string;
}

async function newScene(prefix: string): Promise<Scene> {
  const d = new DriverProcess(prefix);
  await d.start();
  const dirVolume = await createVolume(d, `${prefix}-dir`, "dir");
  const blockVolume = await createVolume(d, `${prefix}-block`, "block", "ext4");
  const dirStaging = d.path("dir-staging");
  mkdirSync(dirStaging);
  await stage(d, dirVolume, dirStaging);
  return { d, dirVolume, dirStaging, blockVolume };
}

interface HostileCase {
  label: string;
  /** The path, given the scene (may set things up: symlinks, mounts). */
  path: (s: Scene) => string;
  /** Paths outside the test dir a wrong answer could leave something at. */
  outside?: (s: Scene) => string[];
  message?: RegExp;
}

/** A symlink at `link` to `to`, made once per driver (the cases run for publish and for stage). */
function ensureSymlink(to: string, link: string): void {
  try {
    symlinkSync(to, link);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
}

/** `base` + /aaa...a components, exactly `bytes` long. */
function padded(base: string, bytes: number): string {
  let p = base;
  while (p.length < bytes) p += bytes - p.length === 1 ? "a" : `/${"a".repeat(Math.min(200, bytes - p.length - 1))}`;
  return p;
}

const prefix = testPrefix();
const name = (tag: string) => `${prefix}-${tag}`;

const HOSTILE: HostileCase[] = [
  { label: "under /proc", path: () => `/proc/${name("p")}`, outside: () => [`/proc/${name("p")}`], message: /proc/ },
  { label: "under /sys", path: () => `/sys/${name("s")}`, outside: () => [`/sys/${name("s")}`], message: /sys/ },
  { label: "under /dev (devtmpfs)", path: () => `/dev/${name("d")}`, outside: () => [`/dev/${name("d")}`], message: /dev/ },
  {
    label: "two levels under /proc",
    path: () => `/proc/${name("p2")}/x`,
    outside: () => [`/proc/${name("p2")}`],
  },
  {
    label: "through a symlinked parent into /proc",
    path: (s) => {
      const link = s.d.path("to-proc");
      ensureSymlink("/proc", link);
      return join(link, name("l"));
    },
    outside: () => [`/proc/${name("l")}`],
  },
  {
    label: "a symlink to a path under /proc",
    path: (s) => {
      const link = s.d.path("link-proc-x");
      ensureSymlink(`/proc/${name("lx")}`, link);
      return link;
    },
    outside: () => [`/proc/${name("lx")}`],
  },
  {
    label: "on a proc filesystem mounted elsewhere",
    path: (s) => {
      const at = join(s.d.root, "procfs");
      if (!existsSync(at)) {
        mkdirSync(at);
        sh("mount", ["-t", "proc", "proc", at]);
      }
      return join(at, name("m"));
    },
    message: /proc/,
  },
  {
    label: "on a devtmpfs mounted elsewhere",
    path: (s) => {
      const at = join(s.d.root, "devfs");
      if (!existsSync(at)) {
        mkdirSync(at);
        sh("mount", ["-t", "devtmpfs", "devtmpfs", at]);
      }
      return join(at, name("dt"));
    },
    // the same superblock as /dev: anything made there shows up in /dev
    outside: () => [`/dev/${name("dt")}`],
    message: /devtmpfs/,
  },
  {
    label: "on a cgroup2 filesystem",
    path: () => `/sys/fs/cgroup/${name("cg")}`,
    outside: () => [`/sys/fs/cgroup/${name("cg")}`],
  },
  { label: "relative", path: () => `kubelet/${name("rel")}` },
  { label: "of exactly PATH_MAX bytes (no room for the NUL)", path: (s) => padded(s.d.path("long"), 4096) },
  { label: "of 64 KiB", path: (s) => padded(s.d.path("long"), 65536) },
  { label: "with a component longer than NAME_MAX", path: (s) => s.d.path("n".repeat(256)) },
  { label: "with a NUL byte", path: (s) => s.d.path("nul\u0000x") },
];

describe("CSI driver: hostile target and staging paths", { timeout: 120_000 }, () => {
  let scene: Scene | undefined;
  let strays: string[] = [];

  const ready = async (): Promise<Scene> => {
    if (scene && (await scene.d.alive())) return scene;
    // A driver that stopped answering (hung on the previous case) is replaced by a fresh one.
    await scene?.d.cleanup();
    scene = await newScene(testPrefix());
    return scene;
  };

  beforeAll(async () => {
    await ready();
  }, 120_000);

  afterEach(() => {
    for (const p of strays) removeStray(p);
    strays = [];
  });

  afterAll(async () => {
    await scene?.d.cleanup();
  });

  /** After a refused call: the driver answers, and nothing about `path` is recorded or mounted. */
  const nothingLeft = async (s: Scene, path: string) => {
    expect(await s.d.alive(), "the driver still answers Probe").toBe(true);
    expectNotRecorded(s.d, path);
    if (!path.includes("\u0000")) expect(mountAt(path)).toBeNull();
  };

  /** A hostile case's paths outside the test dir: removed after the case, and must not be created by it. */
  const outsidePaths = (c: HostileCase, s: Scene) => {
    const paths = c.outside?.(s) ?? [];
    strays.push(...paths);
    return {
      notCreated() {
        for (const p of paths) expect(existsSync(p), `${p} must not be created`).toBe(false);
      },
    };
  };

  it.each(HOSTILE)("NodePublishVolume, target $label: INVALID_ARGUMENT", async (c) => {
    const s = await ready();
    const target = c.path(s);
    const outside = outsidePaths(c, s);
    await expectCode(publish(s.d, s.dirVolume, s.dirStaging, target), "INVALID_ARGUMENT", c.message);
    await nothingLeft(s, target);
    outside.notCreated();
  });

  it.each(HOSTILE)("NodeStageVolume, staging path $label: INVALID_ARGUMENT", async (c) => {
    const s = await ready();
    const staging = c.path(s);
    const outside = outsidePaths(c, s);
    await expectCode(stage(s.d, s.blockVolume, staging, "ext4"), "INVALID_ARGUMENT", c.message);
    await nothingLeft(s, staging);
    outside.notCreated();
  });

  it("NodeStageVolume at a staging dir that is a symlink: INVALID_ARGUMENT", async () => {
    const s = await ready();
    const real = s.d.path("stage-real");
    const link = s.d.path("stage-link");
    mkdirSync(real);
    symlinkSync(real, link);
    await expectCode(stage(s.d, s.blockVolume, link, "ext4"), "INVALID_ARGUMENT", /symlink/);
    await nothingLeft(s, link);
    expect(mountAt(real)).toBeNull();
  });

  it("NodeStageVolume below a symlinked parent: INVALID_ARGUMENT", async () => {
    const s = await ready();
    const real = s.d.path("parent-real");
    const link = s.d.path("parent-link");
    mkdirSync(real);
    symlinkSync(real, link);
    const staging = join(link, "stage");
    await expectCode(stage(s.d, s.blockVolume, staging, "ext4"), "INVALID_ARGUMENT", /symlink/);
    await nothingLeft(s, staging);
    expect(existsSync(join(real, "stage"))).toBe(false);
  });

  it.each([
    ["NodePublishVolume", "target_path"],
    ["NodeStageVolume", "staging_target_path"],
  ])("%s at a mount point the driver did not make: FAILED_PRECONDITION; unpublish/unstage leave it mounted", async (method) => {
    const s = await ready();
    const foreign = s.d.path(`foreign-${method}`);
    mkdirSync(foreign);
    sh("mount", ["-t", "tmpfs", "-o", "size=1m", `${prefix}-foreign`, foreign]);
    const volume = method === "NodePublishVolume" ? s.dirVolume : s.blockVolume;
    const call =
      method === "NodePublishVolume" ? publish(s.d, volume, s.dirStaging, foreign) : stage(s.d, volume, foreign, "ext4");
    await expectCode(call, "FAILED_PRECONDITION", /mount point/);
    expectNotRecorded(s.d, foreign);
    const undo =
      method === "NodePublishVolume"
        ? s.d.call("Node", "NodeUnpublishVolume", { volume_id: volume, target_path: foreign })
        : s.d.call("Node", "NodeUnstageVolume", { volume_id: volume, staging_target_path: foreign });
    await undo;
    expect(mountAt(foreign)?.fstype).toBe("tmpfs");
    sh("umount", [foreign]);
  });

  it("NodeUnpublishVolume of a target that became a symlink to a foreign mount does not unmount it", async () => {
    const s = await ready();
    const target = s.d.path("swapped-target");
    await publish(s.d, s.dirVolume, s.dirStaging, target);
    // The mount went away (a reboot), and the target was replaced by a symlink to someone's mount.
    sh("umount", [target]);
    rmdirSync(target);
    const foreign = s.d.path("someone-else");
    mkdirSync(foreign);
    sh("mount", ["-t", "tmpfs", "-o", "size=1m", `${prefix}-else`, foreign]);
    symlinkSync(foreign, target);
    try {
      await s.d.call("Node", "NodeUnpublishVolume", { volume_id: s.dirVolume, target_path: target });
      expect(mountAt(foreign)?.fstype).toBe("tmpfs");
      expect(s.d.rows("publications").map((r) => r.target_path)).not.toContain(target);
    } finally {
      while (mountAt(foreign)) sh("umount", [foreign]);
    }
  });

  it("a staging path whose missing parents are ordinary directories is created and works", async () => {
    const s = await ready();
    const staging = s.d.path("deep/er/stage");
    await stage(s.d, s.blockVolume, staging, "ext4");
    expect(mountAt(staging)?.fstype).toBe("ext4");
    await s.d.call("Node", "NodeUnstageVolume", { volume_id: s.blockVolume, staging_target_path: staging });
    expect(mountAt(staging)).toBeNull();
  });
});

describe("CSI driver: start-up with a hostile row in its state", { timeout: 120_000 }, () => {
  let d: DriverProcess | undefined;
  let strays: string[] = [];
  afterEach(async () => {
    await d?.cleanup();
    d = undefined;
    for (const p of strays) removeStray(p);
    strays = [];
  });

  it("opens its socket, answers Probe, and reports the volumes whose rows cannot be repaired as abnormal", async () => {
    const p = testPrefix();
    d = new DriverProcess(p);
    await d.start();
    const published = await createVolume(d, `${p}-pub`, "dir");
    const staged = await createVolume(d, `${p}-stage`, "block", "ext4");
    const healthy = await createVolume(d, `${p}-ok`, "dir");
    const staging = d.path("staging");
    const healthyStaging = d.path("healthy-staging");
    const healthyTarget = d.path("healthy-target");
    mkdirSync(staging);
    mkdirSync(healthyStaging);
    await stage(d, published, staging);
    await stage(d, healthy, healthyStaging);
    await publish(d, healthy, healthyStaging, healthyTarget);
    await d.kill();

    // What a crash right after recording a hostile request would have left.
    const procTarget = `/proc/${p}-t`;
    const procStaging = `/proc/${p}-s`;
    strays.push(procTarget, procStaging);
    d.write(
      "INSERT INTO publications (volume_id, target_path, access_type, mode, read_only, mount_flags) VALUES (?, ?, 'mount', 'SINGLE_NODE_WRITER', 0, '[]')",
      published,
      procTarget,
    );
    d.write(
      "INSERT INTO stagings (volume_id, staging_path, access_type, mode, mount_flags) VALUES (?, ?, 'mount', 'SINGLE_NODE_WRITER', '[]')",
      staged,
      procStaging,
    );

    await d.start(30_000);
    expect(await d.alive()).toBe(true);
    for (const [volume, path] of [
      [published, procTarget],
      [staged, procStaging],
    ] as const) {
      const stats = await d.call<{ volume_condition: { abnormal: boolean; message: string } }>("Node", "NodeGetVolumeStats", {
        volume_id: volume,
        volume_path: path,
      });
      expect(stats.volume_condition.abnormal).toBe(true);
      expect(stats.volume_condition.message).toContain(path);
      const got = await d.call<{ status: { volume_condition: { abnormal: boolean; message: string } } }>(
        "Controller",
        "ControllerGetVolume",
        { volume_id: volume },
      );
      expect(got.status.volume_condition.abnormal).toBe(true);
      expect(got.status.volume_condition.message).toContain(path);
      expect(existsSync(path)).toBe(false);
    }
    const list = await d.call<{
      entries: { volume: { volume_id: string }; status: { volume_condition: { abnormal: boolean } } }[];
    }>("Controller", "ListVolumes", {});
    const abnormal = Object.fromEntries(list.entries.map((e) => [e.volume.volume_id, e.status.volume_condition.abnormal]));
    expect(abnormal).toEqual({ [published]: true, [staged]: true, [healthy]: false });
    // The healthy volume was repaired as before: its publication is mounted again.
    expect(mountAt(healthyTarget)?.fstype).toBe("ext4");
    expect(d.stderr).toMatch(/abnormal|could not restore/);

    // The CO cleans up: unpublishing and unstaging the hostile rows works and clears them.
    await d.call("Node", "NodeUnpublishVolume", { volume_id: published, target_path: procTarget });
    await d.call("Node", "NodeUnstageVolume", { volume_id: staged, staging_target_path: procStaging });
    expect(d.rows("publications").map((r) => r.target_path)).toEqual([healthyTarget]);
    expect(
      d
        .rows("stagings")
        .map((r) => r.staging_path)
        .sort(),
    ).toEqual([healthyStaging, staging].sort());
    const after = await d.call<{ status: { volume_condition: { abnormal: boolean; message: string } } }>(
      "Controller",
      "ControllerGetVolume",
      { volume_id: published },
    );
    expect(after.status.volume_condition).toMatchObject({ abnormal: false });
  });
});

describe("CSI driver: hostile directories on the command line", () => {
  it.each([
    ["--data-dir", "/proc/berth-hostile/data"],
    ["--state-dir", "/proc/berth-hostile/state"],
    ["--endpoint", "unix:///proc/berth-hostile/csi.sock"],
  ])("berth csi %s %s exits 2 with a message, not a hang", async (flag, value) => {
    const root = mkdtempSync(join(tmpdir(), `${testPrefix()}-`));
    try {
      const args: Record<string, string> = {
        "--endpoint": `unix://${join(root, "csi.sock")}`,
        "--data-dir": join(root, "data"),
        "--state-dir": join(root, "state"),
        [flag]: value,
      };
      const child = spawn(
        process.execPath,
        ["--import", "tsx", join(REPO, "bin", "cli.ts"), "csi", ...Object.entries(args).flat()],
        {
          cwd: REPO,
          stdio: ["ignore", "ignore", "pipe"],
        },
      );
      let stderr = "";
      child.stderr?.on("data", (d: Buffer) => {
        stderr += d.toString();
      });
      const code = await new Promise<number | string>((res) => {
        const timer = setTimeout(() => {
          child.kill("SIGKILL");
          res("hung");
        }, 20_000);
        child.once("exit", (c, sig) => {
          clearTimeout(timer);
          res(c ?? sig ?? "?");
        });
      });
      expect({ code, stderr: stderr.trim() }).toMatchObject({
        code: 2,
        stderr: expect.stringMatching(/^berth csi: .*\/proc\/berth-hostile.*ENOENT$/),
      });
      expect(stderr).not.toMatch(/\n\s+at /);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("CSI driver: start-up with a row it cannot read", { timeout: 120_000 }, () => {
  let d: DriverProcess | undefined;
  afterEach(async () => {
    await d?.cleanup();
    d = undefined;
  });

  it("opens its socket and serves the volumes it can read", async () => {
    const p = testPrefix();
    d = new DriverProcess(p);
    await d.start();
    const good = await createVolume(d, `${p}-good`, "dir");
    const bad = await createVolume(d, `${p}-bad`, "dir");
    const staging = d.path("staging");
    mkdirSync(staging);
    await stage(d, good, staging);
    await d.kill();
    d.write("UPDATE volumes SET access_types = '{not json' WHERE id = ?", bad);

    await d.start(30_000);
    expect(await d.alive()).toBe(true);
    const stats = await d.call<{ volume_condition: { abnormal: boolean } }>("Node", "NodeGetVolumeStats", {
      volume_id: good,
      volume_path: staging,
    });
    expect(stats.volume_condition.abnormal).toBe(false);
    expect(d.stderr).toMatch(/reading volumes/);
    expect(d.stderr).not.toMatch(/\n\s+at /);
  });
});

describe("CSI driver: hostile capacities", { timeout: 120_000 }, () => {
  let d: DriverProcess | undefined;
  beforeAll(async () => {
    d = new DriverProcess(testPrefix());
    await d.start();
  }, 60_000);
  afterAll(async () => {
    await d?.cleanup();
  });

  const images = () => readdirSync(join(d!.dataDir, "images")).sort();
  const notReady = () => d!.rows("volumes").filter((r) => r.status !== "ready");

  it.each([
    ["required_bytes -1", { required_bytes: "-1" }, "INVALID_ARGUMENT"],
    ["limit_bytes -1", { limit_bytes: "-1" }, "INVALID_ARGUMENT"],
    ["required above limit", { required_bytes: String(64 * MiB), limit_bytes: String(32 * MiB) }, "OUT_OF_RANGE"],
    ["limit below what a filesystem needs", { limit_bytes: "1" }, "OUT_OF_RANGE"],
    ["1 PB", { required_bytes: String(2 ** 50) }, "RESOURCE_EXHAUSTED"],
    ["2^63-1", { required_bytes: "9223372036854775807" }, "RESOURCE_EXHAUSTED"],
    [
      "2^63-1 as the limit, 1 PB required",
      { required_bytes: String(2 ** 50), limit_bytes: "9223372036854775807" },
      "RESOURCE_EXHAUSTED",
    ],
  ])("CreateVolume with %s: %s, nothing made", async (label, range, code) => {
    const before = images();
    await expectCode(
      d!.call("Controller", "CreateVolume", {
        name: `cap-${label.replace(/[^a-z0-9]+/gi, "-")}`,
        capacity_range: range,
        volume_capabilities: [mountCap()],
      }),
      code,
    );
    expect(await d!.alive()).toBe(true);
    expect(images()).toEqual(before);
    expect(notReady()).toEqual([]);
  });

  it("CreateVolume with capacity 0 (unknown) makes a volume of the driver's own choosing", async () => {
    const { volume } = await d!.call<{ volume: { volume_id: string; capacity_bytes: number } }>("Controller", "CreateVolume", {
      name: "cap-zero",
      capacity_range: { required_bytes: "0", limit_bytes: "0" },
      volume_capabilities: [mountCap()],
    });
    expect(volume.capacity_bytes).toBeGreaterThan(0);
    expect(images()).toContain(`${volume.volume_id}.img`);
    await d!.call("Controller", "DeleteVolume", { volume_id: volume.volume_id });
  });

  it.each([
    ["-1", "INVALID_ARGUMENT"],
    [String(2 ** 50), "RESOURCE_EXHAUSTED"],
    ["9223372036854775807", "RESOURCE_EXHAUSTED"],
  ])("ControllerExpandVolume to %s: %s, the volume unchanged", async (required, code) => {
    const { volume } = await d!.call<{ volume: { volume_id: string; capacity_bytes: number } }>("Controller", "CreateVolume", {
      name: `expand-${required}`,
      capacity_range: { required_bytes: String(16 * MiB) },
      volume_capabilities: [mountCap()],
    });
    const image = join(d!.dataDir, "images", `${volume.volume_id}.img`);
    const size = statSync(image).size;
    await expectCode(
      d!.call("Controller", "ControllerExpandVolume", {
        volume_id: volume.volume_id,
        capacity_range: { required_bytes: required },
      }),
      code,
    );
    expect(statSync(image).size).toBe(size);
    const got = await d!.call<{ volume: { capacity_bytes: number } }>("Controller", "ControllerGetVolume", {
      volume_id: volume.volume_id,
    });
    expect(got.volume.capacity_bytes).toBe(volume.capacity_bytes);
    await d!.call("Controller", "DeleteVolume", { volume_id: volume.volume_id });
  });
});
