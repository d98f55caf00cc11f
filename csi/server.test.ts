// The server as a process sees it: socket handling, identity, metrics, crash recovery, CLI.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import Database from "better-sqlite3";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";
import { backloggedServer } from "../testing/sockets.ts";

let t: TestDriver;

beforeEach(async () => {
  t = await createTestDriver(testPrefix());
});

afterEach(async () => {
  await t.cleanup();
});

describe("socket", () => {
  it("is mode 0660, alone in its directory, and replaces a stale socket", async () => {
    mkdirSync(dirname(t.socket), { recursive: true });
    // A stale socket file: bound by a process that is gone, nobody listening.
    execFileSync("python3", ["-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", t.socket]);
    expect(statSync(t.socket).isSocket()).toBe(true);
    await t.start();
    expect(statSync(t.socket).mode & 0o777).toBe(0o660);
    expect(readdirSync(dirname(t.socket))).toEqual(["csi.sock"]);
    const info = await t.identity.GetPluginInfo({});
    expect(info.name).toBe("berth.csi.local");
    expect(info.vendor_version).toBe(JSON.parse(readFileSync(join(import.meta.dirname, "..", "package.json"), "utf8")).version);
    expect(info.manifest["capacity-enforcement"]).toBe("loop-filesystem");
    const probe = await t.identity.Probe({});
    expect(probe.ready.value).toBe(true);
  });

  it("refuses to start when a live server answers on the socket", async () => {
    await t.start();
    const running = t.running;
    await expect(t.start()).rejects.toThrow(/another CSI driver is already listening/);
    t.running = running;
    expect((await t.identity.GetPluginInfo({})).name).toBe("berth.csi.local");
  });

  it("refuses to start when a live server's backlog is full, and leaves its socket", async () => {
    mkdirSync(dirname(t.socket), { recursive: true });
    const server = await backloggedServer(t.socket);
    try {
      const ino = statSync(t.socket).ino;
      await expect(t.start()).rejects.toThrow(/another CSI driver is already listening/);
      expect(statSync(t.socket).ino).toBe(ino);
    } finally {
      server.kill("SIGKILL");
    }
  });

  it("validates the driver name and the endpoint", async () => {
    await expect(t.start({ driverName: "-bad-" })).rejects.toThrow(/driver name/);
    await expect(t.start({ driverName: `a${"b".repeat(63)}` })).rejects.toThrow(/63/);
    await expect(t.start({ endpoint: "tcp://127.0.0.1:1" })).rejects.toThrow(/unix:\/\/\//);
  });
});

describe("capabilities", () => {
  it("advertises what is implemented, and unimplemented RPCs say UNIMPLEMENTED", async () => {
    await t.start();
    const c = await t.controller.ControllerGetCapabilities({});
    const types = c.capabilities.map((x: { rpc: { type: string } }) => x.rpc.type).sort();
    expect(types).toContain("CREATE_DELETE_SNAPSHOT");
    expect(types).toContain("EXPAND_VOLUME");
    expect(types).not.toContain("PUBLISH_UNPUBLISH_VOLUME");
    expect(types).not.toContain("MODIFY_VOLUME");
    await expect(t.controller.ControllerPublishVolume({ volume_id: "x", node_id: "n" })).rejects.toMatchObject({ code: 12 });
    const n = await t.node.NodeGetInfo({});
    expect(n.node_id).toBe("test-node");
    expect(n.accessible_topology.segments["topology.berth/node"]).toBe("test-node");
  });

  it("serves only Identity and Node in node mode", async () => {
    await t.start({ mode: "node" });
    await expect(t.controller.CreateVolume({ name: "x", volume_capabilities: [mountCap()] })).rejects.toMatchObject({ code: 12 });
    expect((await t.node.NodeGetCapabilities({})).capabilities.length).toBeGreaterThan(0);
  });
});

describe("metrics", () => {
  it("counts RPCs by method and status and times them", async () => {
    await t.start({ metricsListen: "127.0.0.1:0" });
    await t.identity.GetPluginInfo({});
    await expect(t.controller.CreateVolume({ name: "" })).rejects.toMatchObject({ code: 3 });
    const res = await fetch(`http://${t.running!.metricsAddress}/metrics`);
    const text = await res.text();
    expect(text).toMatch(/berth_csi_operations_total\{method="GetPluginInfo",status="OK"\} 1/);
    expect(text).toMatch(/berth_csi_operations_total\{method="CreateVolume",status="INVALID_ARGUMENT"\} 1/);
    expect(text).toMatch(/berth_csi_operation_seconds_bucket\{le="0.1",method="GetPluginInfo",status="OK"\} 1/);
  });
});

describe("logs", () => {
  it("never contain secrets or mount flags, even at trace level", async () => {
    const lines: string[] = [];
    const logger = pino({ level: "trace" }, { write: (l: string) => lines.push(l) });
    await t.start({ logger });
    await expect(
      t.controller.CreateVolume({
        name: "s",
        volume_capabilities: [mountCap("", "SINGLE_NODE_WRITER", ["password=hunter2-flag"])],
        secrets: { token: "hunter2-secret" },
        parameters: { bogus: "1" },
      }),
    ).rejects.toMatchObject({ code: 3 });
    const text = lines.join("");
    expect(text).toContain("CreateVolume");
    expect(text).toContain("[redacted]");
    expect(text).not.toContain("hunter2");
  });
});

describe("crash recovery", () => {
  it("removes a volume whose creation was interrupted, and files without a row", async () => {
    await t.start();
    const { volume } = await t.controller.CreateVolume({
      name: "kept",
      capacity_range: { required_bytes: String(16 * MiB) },
      volume_capabilities: [mountCap()],
    });
    await t.stop();
    // Simulate a crash mid-create: an intent row and a temp file, plus an orphan image.
    const db = new Database(join(t.stateDir, "csi.db"));
    db.prepare(
      `INSERT INTO volumes (id, name, kind, capacity, fs_type, access_types, parameters, source_type, source_id, ephemeral, status, created_at)
       VALUES ('vol-11111111-1111-1111-1111-111111111111', 'half', 'dir', 1, 'ext4', '["mount"]', '{}', '', '', 0, 'creating', 0)`,
    ).run();
    db.close();
    writeFileSync(join(t.dataDir, "images", "vol-11111111-1111-1111-1111-111111111111.img.tmp"), "x");
    writeFileSync(join(t.dataDir, "images", "vol-22222222-2222-2222-2222-222222222222.img"), "x");
    await t.start();
    expect(readdirSync(join(t.dataDir, "images"))).toEqual([`${volume.volume_id}.img`]);
    const again = await t.controller.CreateVolume({
      name: "half",
      capacity_range: { required_bytes: String(16 * MiB) },
      volume_capabilities: [mountCap()],
    });
    expect(again.volume.volume_id).not.toBe("vol-11111111-1111-1111-1111-111111111111");
  });
});

describe("berth csi command", () => {
  it("serves until SIGTERM, then exits 0 and removes its socket", async () => {
    mkdirSync(dirname(t.socket), { recursive: true });
    const child: ChildProcess = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        "-e",
        `import("./csi/main.ts").then(async (m) => process.exit(await m.runCsiCommand(process.argv.slice(1))))`,
        "--",
        "--endpoint",
        `unix://${t.socket}`,
        "--data-dir",
        t.dataDir,
        "--state-dir",
        t.stateDir,
        "--node-id",
        "cli-node",
      ],
      { cwd: join(import.meta.dirname, ".."), stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr?.on("data", (d) => {
      stderr += d;
    });
    try {
      for (let i = 0; i < 100 && !stderr.includes("csi driver listening"); i++) await new Promise((r) => setTimeout(r, 100));
      expect(stderr).toContain("csi driver listening");
      expect((await t.node.NodeGetInfo({})).node_id).toBe("cli-node");
      const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
      expect(readdirSync(dirname(t.socket))).toEqual([]);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  });

  it("exits 2 with a message on a bad flag", async () => {
    const { runCsiCommand } = await import("./main.ts");
    expect(await runCsiCommand(["--no-such-flag"])).toBe(2);
  });
});
