// berth volumes in the real Docker Engine (Debian docker.io 20.10): `berth docker-plugin` runs
// as a child process on a socket in /run/docker/plugins/ named for this test (Docker names the
// plugin after the file), over a CSI state dir of its own; a private dockerd discovers it.
// Everything is read back from Docker, the kernel's mount table and loop devices, and the
// plugin's own socket.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBerthCsi } from "../../testing/berth-csi-process.ts";
import {
  DOCKER_PLUGIN_DIR,
  type DockerEngine,
  missingForDockerTest,
  startDockerd,
  startDockerPlugin,
  stopDockerPlugin,
} from "../../testing/docker.ts";
import { testPrefix } from "../../testing/kernel.ts";
import { httpOverUnix, until } from "../../testing/poll.ts";
import { teardownKernelObjects } from "../../testing/storage.ts";
import { CsiClient } from "../csi/client.ts";

const ROOT = resolve(import.meta.dirname, "../..");
const missing = missingForDockerTest();
const prefix = testPrefix();
const base = `/tmp/${prefix}-docker`;
const plugin = `${prefix}berth`;
const socket = join(DOCKER_PLUGIN_DIR, `${plugin}.sock`);
const csiDir = join(base, "csi");
const dockerDir = join(base, "dock");
const MiB = 1024 * 1024;

let engine: DockerEngine;
let child: ChildProcess | undefined;
let childLog = "";

/** Starts `berth docker-plugin` and waits until it answers Plugin.Activate. */
async function startPlugin(): Promise<ChildProcess> {
  // Networks are not used here; the network dirs keep the plugin off the host's defaults all the same.
  const args = ["--csi-dir", csiDir, "--docker-dir", dockerDir, "--ipam-dir", join(base, "ipam")];
  args.push("--overlay-run-dir", join(base, "no-agent"), "--overlay-data-dir", join(base, "no-overlay"));
  const plugin = await startDockerPlugin({ socket, args, onOutput: (text) => (childLog += text) });
  return plugin.child;
}

/** `docker volume create` of a berth volume with `--opt` options. */
function volumeCreate(name: string, ...options: string[]): string[] {
  return ["volume", "create", "-d", plugin, ...options.flatMap((o) => ["--opt", o]), name];
}

/** `docker run --rm` of a container with `volume` at /data. */
function runWith(volume: string, ...command: string[]): string[] {
  return ["run", "--rm", "-v", `${volume}:/data`, engine.image, ...command];
}

/** `docker run -d` of a sleeping container `<prefix><name>` with `volume` at /data. */
function sleeperWith(name: string, volume: string): string[] {
  return ["run", "-d", "--name", `${prefix}${name}`, "-v", `${volume}:/data`, engine.image, "sleep", "600"];
}

function call(endpoint: string, body: string, contentType = "application/vnd.docker.plugins.v1.2+json") {
  return new Promise<{ status: number; json: Record<string, unknown> }>((resolvePromise, reject) => {
    import("node:http").then(({ request }) => {
      const req = request(
        { socketPath: socket, path: endpoint, method: "POST", headers: { "content-type": contentType } },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (d) => {
            text += d;
          });
          res.on("end", () => {
            try {
              resolvePromise({ status: res.statusCode ?? 0, json: JSON.parse(text) });
            } catch {
              reject(new Error(`${endpoint}: answer is not JSON: ${text.slice(0, 200)}`));
            }
          });
        },
      );
      req.setTimeout(10_000, () => req.destroy(new Error(`${endpoint}: timed out`)));
      req.on("error", reject);
      req.end(body);
    }, reject);
  });
}

const activate = () => httpOverUnix(socket, "/Plugin.Activate", { method: "POST", body: "" });

/** The mount points under our test dir, from the kernel's table. */
function mountsUnder(dir: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m.startsWith(`${dir}/`));
}

/** The mount points under our test dir of the volume with this id (its staging and its publications). */
function mountsOfVolume(id: string | number | undefined): string[] {
  return mountsUnder(base).filter((m) => m.includes(String(id)));
}

/** The loop devices backed by a file. */
function loopsOf(img: string): string[] {
  return readdirSync("/sys/block")
    .filter((b) => b.startsWith("loop"))
    .filter((b) => {
      try {
        return readFileSync(`/sys/block/${b}/loop/backing_file`, "utf8").includes(img);
      } catch {
        return false;
      }
    });
}

/**
 * Waits until no loop device is backed by the file. A detached loop device that something
 * still holds open (a container's mount namespace being torn down, udev's probe) is let go
 * by the kernel when its last opener closes it.
 */
async function loopsGone(img: string): Promise<void> {
  await until(
    () => Promise.resolve(loopsOf(img)),
    (l) => l.length === 0,
    `the loop device of ${img} to be detached`,
    10_000,
    50,
  );
}

function images(): string[] {
  const dir = join(csiDir, "volumes", "images");
  return existsSync(dir) ? readdirSync(dir) : [];
}

async function inspect(name: string): Promise<{ Mountpoint: string; Status: Record<string, string | number> }> {
  const out = await engine.docker(["volume", "inspect", name]);
  return (JSON.parse(out.stdout) as { Mountpoint: string; Status: Record<string, string | number> }[])[0]!;
}

describe.skipIf(missing.length > 0)(
  `Docker Engine volumes through berth docker-plugin${missing.length ? ` (missing: ${missing.join(", ")})` : ""}`,
  () => {
    beforeAll(async () => {
      rmSync(socket, { force: true });
      engine = await startDockerd(join(base, "engine"));
      child = await startPlugin();
    }, 120_000);

    afterAll(async () => {
      // Containers first (Docker unmounts their volumes through the plugin), then the plugin.
      await engine?.cleanup();
      await stopDockerPlugin(child);
      rmSync(socket, { force: true });
      teardownKernelObjects(base);
      rmSync(base, { recursive: true, force: true });
    }, 120_000);

    it("activates as a VolumeDriver under Docker's media type; a second plugin on the live socket is refused", async () => {
      const r = await call("/Plugin.Activate", "null");
      expect(r).toEqual({ status: 200, json: { Implements: ["VolumeDriver", "NetworkDriver", "IpamDriver"] } });
      expect((await call("/VolumeDriver.Capabilities", "{}")).json).toEqual({ Capabilities: { Scope: "local" } });
      const second = spawn(
        process.execPath,
        [
          "--import",
          "tsx",
          join(ROOT, "bin/cli.ts"),
          "docker-plugin",
          "--socket",
          socket,
          "--csi-dir",
          join(base, "csi2"),
          "--docker-dir",
          join(base, "dock2"),
        ],
        { stdio: ["ignore", "ignore", "pipe"], cwd: ROOT },
      );
      let err = "";
      second.stderr?.on("data", (d) => {
        err += d;
      });
      const code = await new Promise<number | null>((r) => second.once("exit", r));
      expect(code).toBe(1);
      expect(err).toContain(`another Docker plugin is already listening on ${socket}`);
      expect((await activate()).status).toBe(200); // the first one still serves
    });

    it("creates a 64M volume that Docker inspects with its size; a container writing 100 MB gets ENOSPC; the next container reads the data", async () => {
      await engine.docker(volumeCreate("v1", "size=64M"));
      const v = await inspect("v1");
      expect(v.Status.size).toBe(64 * MiB);
      expect(v.Status.kind).toBe("dir");
      expect(v.Status.condition).toBe("healthy");
      expect(v.Mountpoint).toBe(""); // not mounted while no container uses it
      const img = join(csiDir, "volumes", "images", `${v.Status.id}.img`);
      expect(statSync(img).size).toBe(64 * MiB);

      const w = await engine.tryDocker(
        runWith(
          "v1",
          "sh",
          "-c",
          "dd if=/dev/zero of=/data/big bs=1M count=100; echo dd=$?; rm /data/big; echo kept > /data/hello",
        ),
      );
      expect(w.stderr).toContain("No space left on device");
      expect(w.stdout).toContain("dd=1");
      const r = await engine.docker(runWith("v1", "cat", "/data/hello"));
      expect(r.stdout.trim()).toBe("kept");
      // Both containers are gone: the volume is unpublished, and stays staged (loop device
      // attached, filesystem mounted) for the next container's quick start.
      const mountpoint = join(dockerDir, "mounts", String(v.Status.id));
      expect(mountsUnder(dockerDir)).not.toContain(mountpoint);
      expect(mountsOfVolume(v.Status.id)).not.toEqual([]);
      expect(loopsOf(img)).toHaveLength(1);
      expect((await inspect("v1")).Mountpoint).toBe("");
      expect((await inspect("v1")).Status.used).toBeGreaterThan(0);
      // Staged is not in use: docker volume rm succeeds and releases everything.
      await engine.docker(["volume", "rm", "v1"]);
      expect(mountsOfVolume(v.Status.id)).toEqual([]);
      await loopsGone(img);
      expect(images()).not.toContain(`${v.Status.id}.img`);
    });

    it("keeps a volume mounted while any container uses it, counted per container", async () => {
      await engine.docker(volumeCreate("v2", "size=32M"));
      // Three containers start at once: their Mounts of one volume are served one after another.
      await Promise.all(["a", "b", "x"].map((n) => engine.docker(sleeperWith(n, "v2"))));
      expect((await inspect("v2")).Status.users).toBe(3);
      await engine.docker(["rm", "-f", `${prefix}x`]);
      const v = await inspect("v2");
      expect(v.Status.users).toBe(2);
      expect(mountsUnder(dockerDir)).toContain(v.Mountpoint);
      await engine.docker(["exec", `${prefix}a`, "sh", "-c", "echo from-a > /data/a"]);
      await engine.docker(["rm", "-f", `${prefix}a`]);
      expect((await inspect("v2")).Status.users).toBe(1);
      expect(mountsUnder(dockerDir)).toContain(v.Mountpoint);
      expect((await engine.docker(["exec", `${prefix}b`, "cat", "/data/a"])).stdout.trim()).toBe("from-a");
      await engine.docker(["rm", "-f", `${prefix}b`]);
      expect((await inspect("v2")).Status.users).toBe(0);
      expect(mountsUnder(dockerDir)).not.toContain(v.Mountpoint);
      await engine.docker(["volume", "rm", "v2"]);
      expect(images()).not.toContain(`${v.Status.id}.img`);
      expect(mountsOfVolume(v.Status.id)).toEqual([]);
      await loopsGone(`${v.Status.id}.img`);
    });

    it("serves concurrent Create, Mount and Unmount calls of one volume one after another, each counted", async () => {
      // Three Creates of one name at once (docker run -v v5:... in parallel): one volume, no error.
      const created = await Promise.all(
        [1, 2, 3].map(() => call("/VolumeDriver.Create", JSON.stringify({ Name: "v5", Opts: { size: "32M" } }))),
      );
      expect(created.map((r) => [r.status, r.json])).toEqual([
        [200, {}],
        [200, {}],
        [200, {}],
      ]);
      expect(
        ((await call("/VolumeDriver.List", "{}")).json.Volumes as { Name: string }[]).filter((v) => v.Name === "v5"),
      ).toHaveLength(1);
      const ids = [1, 2, 3, 4, 5].map((n) => `${String(n).repeat(64)}`);
      const mounted = await Promise.all(ids.map((ID) => call("/VolumeDriver.Mount", JSON.stringify({ Name: "v5", ID }))));
      expect(mounted.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
      const at = String(mounted[0]!.json.Mountpoint);
      expect(new Set(mounted.map((r) => r.json.Mountpoint))).toEqual(new Set([at]));
      expect(mountsUnder(dockerDir)).toContain(at);
      expect((await inspect("v5")).Status.users).toBe(5);
      const unmounted = await Promise.all(ids.map((ID) => call("/VolumeDriver.Unmount", JSON.stringify({ Name: "v5", ID }))));
      expect(unmounted.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
      expect((await inspect("v5")).Status.users).toBe(0);
      expect(mountsUnder(dockerDir)).not.toContain(at);
      await engine.docker(["volume", "rm", "v5"]);
    });

    it("refuses docker volume rm while a container uses the volume, in Docker and in the plugin", async () => {
      await engine.docker(volumeCreate("v3", "size=32M"));
      await engine.docker(sleeperWith("c", "v3"));
      const rm = await engine.tryDocker(["volume", "rm", "v3"]);
      expect(rm.code).not.toBe(0);
      expect(rm.stderr).toContain("volume is in use");
      // Past Docker's own reference count, the plugin refuses too.
      const direct = await call("/VolumeDriver.Remove", JSON.stringify({ Name: "v3" }));
      expect(direct.status).toBe(409);
      expect(direct.json.Err).toMatch(/^volume v3 is in use by 1 container\(s\)/);
      expect((await inspect("v3")).Status.users).toBe(1);
      await engine.docker(["rm", "-f", `${prefix}c`]);
      await engine.docker(["volume", "rm", "v3"]);
      expect((await engine.docker(["volume", "ls", "-q"])).stdout.split("\n")).not.toContain("v3");
    });

    it("survives kill -9 of the plugin while a container has the volume mounted; docker rm afterwards releases everything", async () => {
      await engine.docker(volumeCreate("v4", "size=32M"));
      await engine.docker(sleeperWith("k", "v4"));
      await engine.docker(["exec", `${prefix}k`, "sh", "-c", "echo before > /data/f"]);
      const v = await inspect("v4");
      await stopDockerPlugin(child, "SIGKILL");
      expect(existsSync(socket)).toBe(true); // stale socket left behind
      expect((await engine.docker(["exec", `${prefix}k`, "cat", "/data/f"])).stdout.trim()).toBe("before");
      child = await startPlugin(); // replaces the stale socket
      const after = await inspect("v4");
      expect(after.Status.users).toBe(1); // the use count outlived the process
      expect(after.Mountpoint).toBe(v.Mountpoint);
      await engine.docker(["exec", `${prefix}k`, "sh", "-c", "echo after >> /data/f"]);
      expect((await engine.docker(["exec", `${prefix}k`, "cat", "/data/f"])).stdout).toBe("before\nafter\n");
      await engine.docker(["rm", "-f", `${prefix}k`]);
      expect(mountsUnder(dockerDir)).not.toContain(v.Mountpoint);
      expect((await call("/VolumeDriver.Path", JSON.stringify({ Name: "v4" }))).json).toEqual({ Mountpoint: "" });
      await engine.docker(["volume", "rm", "v4"]);
      expect(images()).not.toContain(`${v.Status.id}.img`);
      expect(mountsOfVolume(v.Status.id)).toEqual([]);
      await loopsGone(`${v.Status.id}.img`);
    });

    it("keeps an unused volume staged between containers and unstages it when the plugin stops", async () => {
      await engine.docker(volumeCreate("v6", "size=32M"));
      const v = await inspect("v6");
      const img = `${v.Status.id}.img`;
      await engine.docker(runWith("v6", "sh", "-c", "echo one > /data/f"));
      expect(loopsOf(img)).toHaveLength(1);
      const staged = mountsOfVolume(v.Status.id);
      expect(staged).not.toEqual([]);
      // The next container finds it staged: the same loop device, the data there.
      const loop = loopsOf(img)[0];
      const r = await engine.docker(runWith("v6", "cat", "/data/f"));
      expect(r.stdout.trim()).toBe("one");
      expect(loopsOf(img)).toEqual([loop]);
      // A plugin that stops releases the volumes no container uses.
      await stopDockerPlugin(child);
      expect(mountsOfVolume(v.Status.id)).toEqual([]);
      await loopsGone(img);
      child = await startPlugin();
      const again = await engine.docker(runWith("v6", "cat", "/data/f"));
      expect(again.stdout.trim()).toBe("one");
      await engine.docker(["volume", "rm", "v6"]);
      expect(mountsOfVolume(v.Status.id)).toEqual([]);
      await loopsGone(img);
    });

    it("makes block volumes with xfs, and a volume from a snapshot cut by the CSI driver on the same state", async () => {
      await engine.docker(volumeCreate("b1", "kind=block", "fsType=xfs", "size=320M"));
      const b = await inspect("b1");
      expect(b.Status).toMatchObject({ kind: "block", fsType: "xfs", size: 320 * MiB });
      const w = await engine.docker(runWith("b1", "sh", "-c", "echo snap-me > /data/f; grep -c ' /data xfs ' /proc/mounts"));
      expect(w.stdout.trim()).toBe("1");

      // The CSI driver serves the same volumes: a snapshot of the Docker volume, by its id.
      const csiSocket = join(base, "csi.sock");
      const csi = await startBerthCsi({
        socket: csiSocket,
        stateDir: csiDir,
        dataDir: join(csiDir, "volumes"),
        fromSources: true,
      });
      let snapshotId = "";
      try {
        const client = CsiClient.connect(`unix://${csiSocket}`);
        try {
          const r = await client.call<{ snapshot?: { snapshot_id: string } }>("Controller", "CreateSnapshot", {
            source_volume_id: String(b.Status.id),
            name: `${prefix}-snap`,
          });
          if (!r.snapshot) throw new Error("CreateSnapshot answered no snapshot");
          snapshotId = r.snapshot.snapshot_id;
        } finally {
          client.close();
        }
      } finally {
        await csi.stop();
      }
      await engine.docker(volumeCreate("b2", "kind=block", "fsType=xfs", `from-snapshot=${snapshotId}`));
      expect((await inspect("b2")).Status).toMatchObject({ kind: "block", "from-snapshot": snapshotId });
      const r = await engine.docker(runWith("b2", "cat", "/data/f"));
      expect(r.stdout.trim()).toBe("snap-me");
      // A snapshot of another shape is refused with the CSI driver's own words.
      const misfit = await engine.tryDocker(volumeCreate("b3", `from-snapshot=${snapshotId}`));
      expect(misfit.stderr).toContain(`snapshot ${snapshotId} holds a block/xfs volume, not dir/ext4`);
      await engine.docker(["volume", "rm", "b1", "b2"]);
    });

    it("answers bad input with a clear Err and creates nothing", async () => {
      const before = images().sort();
      const cases: [string, string, RegExp][] = [
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b1", Opts: { sise: "64M" } }),
          /^unknown option "sise" \(known: size, kind, fsType, from-snapshot\)$/,
        ],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "x".repeat(300), Opts: {} }),
          /^volume name is 300 characters long; at most 100 are allowed$/,
        ],
        ["/VolumeDriver.Create", JSON.stringify({ Name: "../etc", Opts: {} }), /^volume name "..\/etc" is not allowed/],
        ["/VolumeDriver.Create", JSON.stringify({ Name: "a/b", Opts: {} }), /^volume name "a\/b" is not allowed/],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b2", Opts: { size: "0" } }),
          /^option size must be above zero, got "0"$/,
        ],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b3", Opts: { size: "-1" } }),
          /^option size must be a positive size like 64M or 1G, got "-1"$/,
        ],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b4", Opts: { size: "1P" } }),
          /^not enough space in .* for 1125899906842624 bytes$/,
        ],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b5", Opts: { kind: "file" } }),
          /^option kind must be "dir" or "block", got "file"$/,
        ],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b6", Opts: { fsType: "btrfs" } }),
          /^option fsType must be "ext4" or "xfs"/,
        ],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b7", Opts: { "from-snapshot": "snap-00000000-0000-0000-0000-000000000000" } }),
          /^snapshot snap-0+-0000-0000-0000-0+ does not exist$/,
        ],
        ["/VolumeDriver.Create", "{not json", /^VolumeDriver.Create: request body is not JSON$/],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: 5 }),
          /^VolumeDriver.Create: invalid request: body\/Name must be string$/,
        ],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Opts: {} }),
          /^VolumeDriver.Create: invalid request: body must have required property 'Name'$/,
        ],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b8", Opts: { size: 64 } }),
          /^VolumeDriver.Create: invalid request: body\/Opts\/size must be string$/,
        ],
        ["/VolumeDriver.Mount", JSON.stringify({ Name: "nosuch", ID: "abc" }), /^no such volume: nosuch$/],
        [
          "/VolumeDriver.Mount",
          JSON.stringify({ Name: "nosuch" }),
          /^VolumeDriver.Mount: invalid request: body must have required property 'ID'$/,
        ],
        ["/VolumeDriver.Get", JSON.stringify({ Name: "nosuch" }), /^no such volume: nosuch$/],
        ["/NetworkDriver.Frobnicate", "{}", /^POST \/NetworkDriver.Frobnicate: no such plugin endpoint$/],
        [
          "/VolumeDriver.Create",
          JSON.stringify({ Name: "b10", Opts: { size: "1".repeat(70_000) } }),
          /^VolumeDriver.Create: request body is too large$/,
        ],
      ];
      for (const [endpoint, body, want] of cases) {
        const r = await call(endpoint, body);
        const what = `${endpoint} ${body.slice(0, 60)}`;
        expect(r.status, what).toBeGreaterThanOrEqual(400);
        expect(Object.keys(r.json), what).toEqual(["Err"]);
        expect(String(r.json.Err), what).toMatch(want);
        expect(String(r.json.Err)).not.toMatch(/\n\s+at /); // no stack trace
      }
      // Through Docker's CLI the same message reaches the user.
      const cli = await engine.tryDocker(volumeCreate("b9", "size=0"));
      expect(cli.code).not.toBe(0);
      expect(cli.stderr).toContain('option size must be above zero, got "0"');
      expect(images().sort()).toEqual(before);
      expect((await call("/VolumeDriver.List", "{}")).json.Volumes).toEqual(
        expect.not.arrayContaining([expect.objectContaining({ Name: expect.stringMatching(/^b[0-9]$/) })]),
      );
    });
  },
);
