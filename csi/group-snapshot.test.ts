// GroupController service with real data: two volumes written by one process in a known
// order, a group snapshot taken while it writes, both restored, and the pair is consistent.
// Also idempotency, ALREADY_EXISTS, member-id checks, restart, and the failure paths (freeze
// refused, raw block in use): every filesystem is thawed and nothing half-made is left.
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { blockCap, createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";

const INVALID_ARGUMENT = 3;
const NOT_FOUND = 5;
const ALREADY_EXISTS = 6;
const FAILED_PRECONDITION = 9;
const ABORTED = 10;
const RECORD = 16;

let t: TestDriver;

beforeEach(async () => {
  t = await createTestDriver(testPrefix());
  await t.start();
});

afterEach(async () => {
  await t.cleanup();
});

async function createVolume(name: string, kind = "dir", cap = mountCap()) {
  const { volume } = await t.controller.CreateVolume({
    name,
    capacity_range: { required_bytes: String(64 * MiB) },
    volume_capabilities: [cap],
    parameters: { kind },
  });
  return volume;
}

async function publish(volumeId: string, label: string, cap = mountCap()): Promise<{ staging: string; target: string }> {
  const staging = t.path(`${label}-staging`);
  const target = t.path(`${label}-target`);
  mkdirSync(staging, { recursive: true });
  await t.node.NodeStageVolume({ volume_id: volumeId, staging_target_path: staging, volume_capability: cap });
  await t.node.NodePublishVolume({
    volume_id: volumeId,
    staging_target_path: staging,
    target_path: target,
    volume_capability: cap,
  });
  return { staging, target };
}

async function unpublish(volumeId: string, p: { staging: string; target: string }) {
  await t.node.NodeUnpublishVolume({ volume_id: volumeId, target_path: p.target });
  await t.node.NodeUnstageVolume({ volume_id: volumeId, staging_target_path: p.staging });
}

/**
 * One process appends record i to a, then record i to b, for i = 0, 1, 2, ... until killed.
 * Any point in time therefore has b's count equal to a's or one less.
 */
function startWriter(a: string, b: string): ChildProcess {
  const script = `
    const fs = require("node:fs");
    const [fa, fb] = [fs.openSync(process.argv[1], "a"), fs.openSync(process.argv[2], "a")];
    for (let i = 0; ; i++) {
      const rec = String(i).padStart(${RECORD - 1}, "0") + "\\n";
      fs.writeSync(fa, rec);
      fs.writeSync(fb, rec);
    }`;
  return spawn(process.execPath, ["-e", script, a, b], { stdio: "ignore" });
}

/** The records of a log file, checked to be 0, 1, 2, ... with nothing torn. */
function records(file: string): number {
  const text = readFileSync(file, "utf8");
  expect(text.length % RECORD).toBe(0);
  const n = text.length / RECORD;
  for (let i = 0; i < n; i++) expect(Number(text.slice(i * RECORD, (i + 1) * RECORD - 1))).toBe(i);
  return n;
}

const snapshotFiles = () => readdirSync(join(t.dataDir, "snapshots")).sort();

describe("group snapshots", () => {
  it("are advertised: GROUP_CONTROLLER_SERVICE and CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT", async () => {
    const plugin = await t.identity.GetPluginCapabilities({});
    expect(plugin.capabilities.map((c: { service?: { type: string } }) => c.service?.type)).toContain("GROUP_CONTROLLER_SERVICE");
    const caps = await t.group.GroupControllerGetCapabilities({});
    expect(caps.capabilities.map((c: { rpc: { type: string } }) => c.rpc.type)).toEqual([
      "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT",
    ]);
  });

  it("cut a consistent point in time across volumes while one process writes to both", async () => {
    const va = await createVolume("a");
    const vb = await createVolume("b");
    const pa = await publish(va.volume_id, "a");
    const pb = await publish(vb.volume_id, "b");
    const writer = startWriter(join(pa.target, "log"), join(pb.target, "log"));
    const exited = new Promise((r) => writer.once("exit", r));
    let group: Awaited<ReturnType<typeof t.group.CreateVolumeGroupSnapshot>>["group_snapshot"];
    try {
      // Let it write for a while, then cut the group while it goes on writing.
      for (let i = 0; i < 200 && (statSync(join(pb.target, "log"), { throwIfNoEntry: false })?.size ?? 0) < 20_000 * RECORD; i++)
        await new Promise((r) => setTimeout(r, 25));
      ({ group_snapshot: group } = await t.group.CreateVolumeGroupSnapshot({
        name: "pair",
        source_volume_ids: [va.volume_id, vb.volume_id],
      }));
      // The writer kept going after the cut: the filesystems were thawed.
      const atCut = statSync(join(pa.target, "log")).size;
      for (let i = 0; i < 200 && statSync(join(pa.target, "log")).size <= atCut + 1000 * RECORD; i++)
        await new Promise((r) => setTimeout(r, 25));
      expect(statSync(join(pa.target, "log")).size).toBeGreaterThan(atCut + 1000 * RECORD);
    } finally {
      writer.kill("SIGKILL");
      await exited;
    }
    await unpublish(va.volume_id, pa);
    await unpublish(vb.volume_id, pb);

    expect(group.ready_to_use).toBe(true);
    expect(group.snapshots.map((s) => s.source_volume_id)).toEqual([va.volume_id, vb.volume_id]);
    for (const s of group.snapshots) {
      expect(s.group_snapshot_id).toBe(group.group_snapshot_id);
      expect(s.ready_to_use).toBe(true);
    }

    // Restore both members and read what each holds.
    const counts: number[] = [];
    for (const [i, s] of group.snapshots.entries()) {
      const { volume } = await t.controller.CreateVolume({
        name: `restored-${i}`,
        capacity_range: { required_bytes: String(64 * MiB) },
        volume_capabilities: [mountCap()],
        parameters: { kind: "dir" },
        volume_content_source: { snapshot: { snapshot_id: s.snapshot_id } },
      });
      const p = await publish(volume.volume_id, `restored-${i}`);
      try {
        counts.push(records(join(p.target, "log")));
      } finally {
        await unpublish(volume.volume_id, p);
      }
    }
    const [a, b] = counts as [number, number];
    expect(a).toBeGreaterThan(1000);
    // b is a's count or one less: never a record in b without the same record in a, and
    // never a record in a without every earlier record in b.
    expect(a - b === 0 || a - b === 1, `a=${a} b=${b}`).toBe(true);
  });

  it("are idempotent by name, ALREADY_EXISTS for other sources, and checked against their member ids", async () => {
    const va = await createVolume("a");
    const vb = await createVolume("b");
    const vc = await createVolume("c");
    const { group_snapshot: g } = await t.group.CreateVolumeGroupSnapshot({
      name: "g",
      source_volume_ids: [va.volume_id, vb.volume_id],
    });
    const again = await t.group.CreateVolumeGroupSnapshot({ name: "g", source_volume_ids: [vb.volume_id, va.volume_id] });
    expect(again.group_snapshot.group_snapshot_id).toBe(g.group_snapshot_id);
    expect(again.group_snapshot.snapshots.map((s) => s.snapshot_id)).toEqual(g.snapshots.map((s) => s.snapshot_id));
    await expect(
      t.group.CreateVolumeGroupSnapshot({ name: "g", source_volume_ids: [va.volume_id, vc.volume_id] }),
    ).rejects.toMatchObject({ code: ALREADY_EXISTS });
    await expect(t.group.CreateVolumeGroupSnapshot({ name: "h", source_volume_ids: [] })).rejects.toMatchObject({
      code: INVALID_ARGUMENT,
    });
    await expect(
      t.group.CreateVolumeGroupSnapshot({ name: "h", source_volume_ids: [va.volume_id, va.volume_id] }),
    ).rejects.toMatchObject({ code: INVALID_ARGUMENT });
    await expect(
      t.group.CreateVolumeGroupSnapshot({ name: "h", source_volume_ids: [va.volume_id, "vol-nope"] }),
    ).rejects.toMatchObject({ code: NOT_FOUND });

    const ids = g.snapshots.map((s) => s.snapshot_id);
    const id = g.group_snapshot_id;
    const got = await t.group.GetVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: ids });
    expect(got.group_snapshot.snapshots.map((s) => s.snapshot_id)).toEqual(ids);
    await expect(t.group.GetVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: [ids[0]!] })).rejects.toMatchObject({
      code: INVALID_ARGUMENT,
    });
    await expect(t.group.GetVolumeGroupSnapshot({ group_snapshot_id: "group-nope" })).rejects.toMatchObject({
      code: NOT_FOUND,
    });

    // Members are snapshots: listed with their group, not deletable one by one.
    const listed = await t.controller.ListSnapshots({ source_volume_id: va.volume_id });
    expect(listed.entries.map((e) => e.snapshot.group_snapshot_id)).toEqual([id]);
    await expect(t.controller.DeleteSnapshot({ snapshot_id: ids[0]! })).rejects.toMatchObject({ code: INVALID_ARGUMENT });

    // The state survives a restart.
    await t.stop();
    await t.start();
    expect((await t.group.GetVolumeGroupSnapshot({ group_snapshot_id: id })).group_snapshot.ready_to_use).toBe(true);

    // Delete refuses a list that is not exactly the group, and leaves everything in place.
    await expect(t.group.DeleteVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: [ids[0]!] })).rejects.toMatchObject({
      code: INVALID_ARGUMENT,
    });
    await expect(
      t.group.DeleteVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: [...ids, "snap-other"] }),
    ).rejects.toMatchObject({ code: INVALID_ARGUMENT });
    await expect(t.group.DeleteVolumeGroupSnapshot({ group_snapshot_id: id })).rejects.toMatchObject({
      code: INVALID_ARGUMENT,
    });
    expect(snapshotFiles()).toEqual(ids.map((s) => `${s}.img`).sort());

    await t.group.DeleteVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: [...ids].reverse() });
    expect(snapshotFiles()).toEqual([]);
    expect((await t.controller.ListSnapshots({})).entries).toEqual([]);
    await expect(t.group.GetVolumeGroupSnapshot({ group_snapshot_id: id })).rejects.toMatchObject({ code: NOT_FOUND });
    await t.group.DeleteVolumeGroupSnapshot({ group_snapshot_id: id, snapshot_ids: ids }); // again: OK
    await t.group.DeleteVolumeGroupSnapshot({ group_snapshot_id: "not-ours" });
    await expect(t.group.DeleteVolumeGroupSnapshot({ group_snapshot_id: "" })).rejects.toMatchObject({
      code: INVALID_ARGUMENT,
    });
  });

  it("fail cleanly when a member cannot be frozen, and thaw the others", async () => {
    const va = await createVolume("a");
    const vb = await createVolume("b");
    const pa = await publish(va.volume_id, "a");
    const pb = await publish(vb.volume_id, "b");
    // b's filesystem is frozen by someone else.
    const mountB = join(t.dataDir, "mounts", vb.volume_id);
    execFileSync("fsfreeze", ["--freeze", mountB]);
    try {
      await expect(
        t.group.CreateVolumeGroupSnapshot({ name: "g", source_volume_ids: [va.volume_id, vb.volume_id] }),
      ).rejects.toMatchObject({ code: ABORTED });
    } finally {
      execFileSync("fsfreeze", ["--unfreeze", mountB]);
    }
    // a was thawed: a write there completes; nothing of the attempt is left.
    execFileSync("dd", ["if=/dev/zero", `of=${join(pa.target, "after")}`, "bs=4k", "count=1", "conv=fsync"], {
      timeout: 10_000,
    });
    expect(snapshotFiles()).toEqual([]);
    const retry = await t.group.CreateVolumeGroupSnapshot({ name: "g", source_volume_ids: [va.volume_id, vb.volume_id] });
    expect(retry.group_snapshot.ready_to_use).toBe(true);
    await unpublish(va.volume_id, pa);
    await unpublish(vb.volume_id, pb);
  });

  it("cut midway by a crash are removed at the next start, members and files with them", async () => {
    const va = await createVolume("a");
    const { group_snapshot: kept } = await t.group.CreateVolumeGroupSnapshot({ name: "kept", source_volume_ids: [va.volume_id] });
    await t.stop();
    // What a crash between the intent and the flip to ready leaves: rows "creating", a file.
    const half = "group-11111111-1111-4111-8111-111111111111";
    const member = "snap-22222222-2222-4222-8222-222222222222";
    const db = new Database(join(t.stateDir, "csi.db"));
    db.prepare(
      "INSERT INTO group_snapshots (id, name, source_volume_ids, status, created_at) VALUES (?, 'half', ?, 'creating', 0)",
    ).run(half, JSON.stringify([va.volume_id]));
    db.prepare(
      `INSERT INTO snapshots (id, name, source_volume_id, size, fs_type, kind, status, created_at, group_snapshot_id)
       VALUES (?, ?, ?, 1, 'ext4', 'dir', 'creating', 0, ?)`,
    ).run(member, `\u0001group/${half}/${va.volume_id}`, va.volume_id, half);
    db.close();
    writeFileSync(join(t.dataDir, "snapshots", `${member}.img`), "x");
    await t.start();
    const db2 = new Database(join(t.stateDir, "csi.db"), { readonly: true });
    expect(db2.prepare("SELECT id FROM group_snapshots").all()).toEqual([{ id: kept.group_snapshot_id }]);
    expect(db2.prepare("SELECT count(*) AS n FROM snapshots WHERE group_snapshot_id = ?").get(half)).toEqual({ n: 0 });
    db2.close();
    expect(snapshotFiles()).toEqual([`${kept.snapshots[0]!.snapshot_id}.img`]);
    // The name is free again.
    const again = await t.group.CreateVolumeGroupSnapshot({ name: "half", source_volume_ids: [va.volume_id] });
    expect(again.group_snapshot.group_snapshot_id).not.toBe(half);
  });

  it.each([
    ["a group snapshot", "group"],
    ["a clone", "clone"],
  ])("a filesystem left frozen by a crash during %s is thawed at the next start", async (_label, what) => {
    const va = await createVolume("a");
    const pa = await publish(va.volume_id, "a");
    await t.stop();
    // The driver died holding the freeze of a member's filesystem during a cut.
    const mount = join(t.dataDir, "mounts", va.volume_id);
    execFileSync("fsfreeze", ["--freeze", mount]);
    const db = new Database(join(t.stateDir, "csi.db"));
    if (what === "group") {
      db.prepare(
        "INSERT INTO group_snapshots (id, name, source_volume_ids, status, created_at) VALUES (?, 'cut', ?, 'creating', 0)",
      ).run("group-33333333-3333-4333-8333-333333333333", JSON.stringify([va.volume_id]));
    } else {
      db.prepare(
        `INSERT INTO volumes (id, name, kind, capacity, fs_type, access_types, parameters, source_type, source_id, ephemeral, status, created_at)
         VALUES ('vol-44444444-4444-4444-8444-444444444444', 'clone', 'dir', 1, 'ext4', '["mount"]', '{}', 'volume', ?, 0, 'creating', 0)`,
      ).run(va.volume_id);
    }
    db.close();
    let completed = false;
    let exited: Promise<unknown> = Promise.resolve();
    try {
      await t.start();
      // A writer finishes only if the start thawed the filesystem (a blocked one cannot be
      // killed, so it is never waited for synchronously).
      const writer = spawn("dd", ["if=/dev/zero", `of=${join(pa.target, "after")}`, "bs=4k", "count=1", "conv=fsync"], {
        stdio: "ignore",
      });
      exited = new Promise((r) => writer.once("exit", r));
      completed = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 5000))]);
    } finally {
      spawnSync("fsfreeze", ["--unfreeze", mount], { stdio: "ignore" }); // never leave it frozen
    }
    await exited;
    expect(completed).toBe(true);
    await unpublish(va.volume_id, pa);
  });

  it("refuse a raw block volume in use (its writes cannot be paused)", async () => {
    const raw = await createVolume("raw", "block", blockCap());
    const other = await createVolume("other");
    const p = await publish(raw.volume_id, "raw", blockCap());
    try {
      await expect(
        t.group.CreateVolumeGroupSnapshot({ name: "g", source_volume_ids: [other.volume_id, raw.volume_id] }),
      ).rejects.toMatchObject({ code: FAILED_PRECONDITION });
      expect(snapshotFiles()).toEqual([]);
    } finally {
      await unpublish(raw.volume_id, p);
    }
    // Unused, it is fine.
    const g = await t.group.CreateVolumeGroupSnapshot({ name: "g", source_volume_ids: [other.volume_id, raw.volume_id] });
    expect(g.group_snapshot.snapshots.length).toBe(2);
  });
});
