// Node service against the real kernel: stage, publish, stats, delete-while-published,
// snapshot data round trip, online expansion, unpublish, unstage (spec S12, S22–S27).
// Outcomes are read back from findmnt/stat/statfs, not taken from the driver's replies.
import { execFileSync } from "node:child_process";
import { mkdirSync, statfsSync } from "node:fs";
import { join } from "node:path";
import { expectCode, expectOk, fail, skip } from "./checklist.ts";
import type { Snapshot, Volume, VolumeUsage } from "./client.ts";
import { rule, type SuiteContext, type VolumePaths } from "./context.ts";
import { exists, isBlockDevice, mountAt, mountsUnder } from "./kernel-view.ts";

/** Checks that `target` holds the published volume as the access type requires. */
function assertPublished(ctx: SuiteContext, target: string): void {
  if (ctx.settings.accessType === "block") {
    if (!isBlockDevice(target)) fail(`${target} is not a block device`);
    return;
  }
  const m = mountAt(target);
  if (!m) fail(`nothing is mounted at ${target}`);
}

function assertUnpublished(target: string): void {
  if (mountAt(target)) fail(`${target} is still a mount point`);
  if (exists(target)) fail(`${target} still exists (the driver must remove what it created)`);
}

/** Size of what is published at `target`, as the kernel sees it. */
function kernelSize(ctx: SuiteContext, target: string): number {
  if (ctx.settings.accessType === "block") {
    return Number(execFileSync("blockdev", ["--getsize64", target], { encoding: "utf8" }).trim());
  }
  const s = statfsSync(target);
  return s.blocks * s.bsize;
}

export async function nodeRules(ctx: SuiteContext): Promise<void> {
  const { t, client } = ctx;
  if (!ctx.caps.hasNode) {
    t.skipRule(rule("publish.ok", "MUST", "NodePublishVolume publishes"), "the plugin has no node service");
    return;
  }
  if (!ctx.caps.controller.has("CREATE_DELETE_VOLUME")) {
    t.skipRule(rule("publish.ok", "MUST", "NodePublishVolume publishes"), "no CREATE_DELETE_VOLUME to provision a volume with");
    return;
  }
  const vol = await t.check(rule("node.setup", "MUST", "a volume for the node rules can be created"), () =>
    expectOk(ctx.createVolume(ctx.name("node")), "CreateVolume"),
  );
  const p = ctx.paths("node");
  const unknown = `${ctx.tag}-missing`;

  if (ctx.staged) {
    const stageReq = (over: object) => ({
      volume_id: vol.volume_id,
      staging_target_path: p.staging,
      volume_capability: ctx.capability(),
      volume_context: vol.volume_context,
      ...over,
    });
    const stage = (req: object) => client.call("Node", "NodeStageVolume", req);
    await t.soft(rule("stage.missing-id", "MUST", "NodeStageVolume without volume_id → INVALID_ARGUMENT"), () =>
      expectCode(stage(stageReq({ volume_id: "" })), "INVALID_ARGUMENT"),
    );
    await t.soft(rule("stage.missing-path", "MUST", "NodeStageVolume without staging_target_path → INVALID_ARGUMENT"), () =>
      expectCode(stage(stageReq({ staging_target_path: "" })), "INVALID_ARGUMENT"),
    );
    await t.soft(rule("stage.missing-capability", "MUST", "NodeStageVolume without volume_capability → INVALID_ARGUMENT"), () =>
      expectCode(stage(stageReq({ volume_capability: null })), "INVALID_ARGUMENT"),
    );
    await t.soft(rule("stage.unknown-id", "MUST", "NodeStageVolume of an unknown volume → NOT_FOUND"), async () => {
      const other = ctx.paths("nostage");
      ctx.ledger.addStage(unknown, other.staging);
      await expectCode(stage(stageReq({ volume_id: unknown, staging_target_path: other.staging })), "NOT_FOUND");
      ctx.ledger.dropStage(other.staging);
    });
    await t.check(rule("stage.ok", "MUST", "NodeStageVolume → OK"), () => expectOk(ctx.stage(vol, p), "NodeStageVolume"));
    await t.soft(rule("stage.twice", "MUST", "NodeStageVolume again with the same arguments → OK"), () =>
      expectOk(ctx.stage(vol, p), "second NodeStageVolume"),
    );
  } else {
    t.skipRule(rule("stage.ok", "MUST", "NodeStageVolume"), "STAGE_UNSTAGE_VOLUME not advertised");
  }

  const publish = (req: object) => client.call("Node", "NodePublishVolume", req);
  const req = (over: object) => ({ ...ctx.publishRequest(vol, p), ...over });
  await t.soft(rule("publish.missing-id", "MUST", "NodePublishVolume without volume_id → INVALID_ARGUMENT"), () =>
    expectCode(publish(req({ volume_id: "" })), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("publish.missing-target", "MUST", "NodePublishVolume without target_path → INVALID_ARGUMENT"), () =>
    expectCode(publish(req({ target_path: "" })), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("publish.missing-capability", "MUST", "NodePublishVolume without volume_capability → INVALID_ARGUMENT"), () =>
    expectCode(publish(req({ volume_capability: null })), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("publish.unknown-id", "MUST", "NodePublishVolume of an unknown volume → NOT_FOUND"), async () => {
    const other = ctx.paths("nopub");
    ctx.ledger.addPublish(unknown, other.target);
    await expectCode(
      publish(req({ volume_id: unknown, staging_target_path: ctx.staged ? other.staging : "", target_path: other.target })),
      "NOT_FOUND",
    );
    ctx.ledger.dropPublish(other.target);
  });
  await t.soft(
    rule(
      "publish.without-staging",
      "MUST",
      "NodePublishVolume without staging path while STAGE is advertised → FAILED_PRECONDITION",
    ),
    async () => {
      if (!ctx.staged) skip("STAGE_UNSTAGE_VOLUME not advertised");
      const other = join(p.dir, "target-unstaged");
      ctx.ledger.addPublish(vol.volume_id, other);
      await expectCode(publish(req({ staging_target_path: "", target_path: other })), [
        "FAILED_PRECONDITION",
        "INVALID_ARGUMENT",
      ]);
      ctx.ledger.dropPublish(other);
    },
  );

  await t.check(
    rule(
      "publish.ok",
      "MUST",
      `NodePublishVolume creates the target as ${ctx.settings.accessType === "block" ? "a block device" : "a mount point"}`,
    ),
    async () => {
      await expectOk(ctx.publish(vol, p), "NodePublishVolume");
      assertPublished(ctx, p.target);
    },
  );
  await t.soft(
    rule("publish.twice", "MUST", "NodePublishVolume again with the same arguments → OK, nothing stacked"),
    async () => {
      await expectOk(ctx.publish(vol, p), "second NodePublishVolume");
      const stacked = mountsUnder(p.target).filter((m) => m === p.target).length;
      if (stacked !== 1) fail(`${stacked} mounts at ${p.target}`);
    },
  );
  await t.soft(rule("publish.incompatible", "MUST", "same target, other readonly flag → ALREADY_EXISTS"), () =>
    expectCode(publish(req({ readonly: true })), "ALREADY_EXISTS"),
  );
  await t.soft(
    rule("publish.second-target", "MUST", "SINGLE_NODE_WRITER published at a second target → FAILED_PRECONDITION"),
    async () => {
      const second = join(p.dir, "target2");
      ctx.ledger.addPublish(vol.volume_id, second);
      await expectCode(publish(req({ target_path: second })), "FAILED_PRECONDITION");
      ctx.ledger.dropPublish(second);
    },
  );
  await t.soft(rule("publish.writable", "MUST", "the published volume takes writes"), async () => {
    try {
      ctx.writeMarker(p.target, `${ctx.tag} original`);
    } catch (e) {
      fail(`writing to ${p.target}: ${(e as Error).message}`);
    }
    if (ctx.readMarker(p.target) !== `${ctx.tag} original`) fail("read back something else");
  });

  if (ctx.caps.node.has("GET_VOLUME_STATS")) await statsRules(ctx, vol, p);
  else t.skipRule(rule("stats.ok", "MUST", "NodeGetVolumeStats"), "GET_VOLUME_STATS not advertised");

  await t.soft(
    rule("delete.while-published", "MUST", "DeleteVolume of a published volume → FAILED_PRECONDITION, volume untouched"),
    async () => {
      try {
        await expectCode(client.call("Controller", "DeleteVolume", { volume_id: vol.volume_id }), "FAILED_PRECONDITION");
      } finally {
        assertPublished(ctx, p.target);
      }
      if (ctx.readMarker(p.target) !== `${ctx.tag} original`) fail("the data changed");
    },
  );

  if (ctx.caps.controller.has("CREATE_DELETE_SNAPSHOT")) await snapshotDataRules(ctx, vol);
  else
    t.skipRule(
      rule("snapshot.restore-data", "MUST", "a restored volume holds the snapshot's data"),
      "CREATE_DELETE_SNAPSHOT not advertised",
    );

  await onlineExpandRules(ctx, vol, p);

  const unpublish = (over: object) =>
    client.call("Node", "NodeUnpublishVolume", { volume_id: vol.volume_id, target_path: p.target, ...over });
  await t.soft(rule("unpublish.missing-id", "MUST", "NodeUnpublishVolume without volume_id → INVALID_ARGUMENT"), () =>
    expectCode(unpublish({ volume_id: "" }), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("unpublish.missing-target", "MUST", "NodeUnpublishVolume without target_path → INVALID_ARGUMENT"), () =>
    expectCode(unpublish({ target_path: "" }), "INVALID_ARGUMENT"),
  );
  await t.check(rule("unpublish.ok", "MUST", "NodeUnpublishVolume unmounts and removes the target"), async () => {
    await expectOk(ctx.unpublish(vol, p.target), "NodeUnpublishVolume");
    assertUnpublished(p.target);
  });
  await t.soft(rule("unpublish.twice", "MUST", "NodeUnpublishVolume again → OK"), () =>
    expectOk(unpublish({}), "second NodeUnpublishVolume"),
  );

  await t.soft(rule("publish.data-persists", "MUST", "data written survives unpublish and a new publish"), async () => {
    await expectOk(ctx.publish(vol, p), "NodePublishVolume");
    const got = ctx.readMarker(p.target);
    await expectOk(ctx.unpublish(vol, p.target), "NodeUnpublishVolume");
    if (got !== `${ctx.tag} original`) fail(`read back "${got.slice(0, 40)}"`);
  });
  await t.soft(rule("publish.readonly", "MUST", "readonly=true publishes read-only"), async () => {
    const ro = join(p.dir, "target-ro");
    await expectOk(ctx.publish(vol, p, ro, true), "NodePublishVolume readonly");
    try {
      if (ctx.settings.accessType === "mount") {
        const m = mountAt(ro);
        if (!m) fail(`nothing mounted at ${ro}`);
        if (!m.options.includes("ro")) fail(`mounted with ${m.options.join(",")}`);
      }
      // the real test: the kernel refuses a write (a ro bind mount alone does not stop writes to
      // a device node, so block volumes need a read-only device)
      let wrote = false;
      try {
        ctx.writeMarker(ro, `${ctx.tag} written through a readonly publish`);
        wrote = true;
      } catch {
        // EROFS / EACCES / EPERM: what we want
      }
      if (wrote) fail(`a write through ${ro} succeeded`);
      if (ctx.readMarker(ro) !== `${ctx.tag} original`) fail("the data changed");
    } finally {
      await ctx.unpublish(vol, ro);
    }
  });

  if (ctx.staged) {
    const unstage = (over: object) =>
      client.call("Node", "NodeUnstageVolume", { volume_id: vol.volume_id, staging_target_path: p.staging, ...over });
    await t.soft(rule("unstage.missing-id", "MUST", "NodeUnstageVolume without volume_id → INVALID_ARGUMENT"), () =>
      expectCode(unstage({ volume_id: "" }), "INVALID_ARGUMENT"),
    );
    await t.soft(rule("unstage.missing-path", "MUST", "NodeUnstageVolume without staging_target_path → INVALID_ARGUMENT"), () =>
      expectCode(unstage({ staging_target_path: "" }), "INVALID_ARGUMENT"),
    );
    await t.check(rule("unstage.ok", "MUST", "NodeUnstageVolume → OK, nothing left mounted at the staging path"), async () => {
      await expectOk(ctx.unstage(vol, p), "NodeUnstageVolume");
      const left = mountsUnder(p.staging);
      if (left.length) fail(`still mounted: ${left.join(", ")}`);
    });
    await t.soft(rule("unstage.twice", "MUST", "NodeUnstageVolume again → OK"), () =>
      expectOk(unstage({}), "second NodeUnstageVolume"),
    );
  }
  await t.soft(rule("delete.after-node", "MUST", "DeleteVolume after unpublish/unstage → OK"), () =>
    expectOk(ctx.deleteVolume(vol.volume_id), "DeleteVolume"),
  );
  await offlineExpandRules(ctx);
}

/** Expansion while nothing is published: the next publish must show the new size, data intact. */
async function offlineExpandRules(ctx: SuiteContext): Promise<void> {
  const { t, client } = ctx;
  const r = rule("expand.offline", "MUST", "expanding an unpublished volume: the next publish shows the new size, data intact");
  if (!ctx.caps.controller.has("EXPAND_VOLUME")) return t.skipRule(r, "EXPAND_VOLUME not advertised");
  if (!ctx.caps.expansion.has("OFFLINE") && !ctx.caps.expansion.has("ONLINE"))
    return t.skipRule(r, "no VolumeExpansion plugin capability advertised");
  await t.soft(r, async () => {
    const size = ctx.settings.volumeBytes;
    const want = size * 2;
    const vol = await expectOk(ctx.createVolume(ctx.name("offexp")), "CreateVolume");
    const p = ctx.paths("offexp");
    await expectOk(ctx.stage(vol, p), "NodeStageVolume");
    await expectOk(ctx.publish(vol, p), "NodePublishVolume");
    const before = kernelSize(ctx, p.target);
    ctx.writeMarker(p.target, `${ctx.tag} before expansion`);
    await expectOk(ctx.unpublish(vol, p.target), "NodeUnpublishVolume");
    await expectOk(ctx.unstage(vol, p), "NodeUnstageVolume");
    const res = await expectOk(
      client.call<{ capacity_bytes: number; node_expansion_required: boolean }>("Controller", "ControllerExpandVolume", {
        volume_id: vol.volume_id,
        capacity_range: { required_bytes: want },
        volume_capability: ctx.capability(),
      }),
      "ControllerExpandVolume",
    );
    if (res.capacity_bytes < want) fail(`capacity_bytes ${res.capacity_bytes} < ${want}`);
    await expectOk(ctx.stage(vol, p), "NodeStageVolume after expansion");
    await expectOk(ctx.publish(vol, p), "NodePublishVolume after expansion");
    if (res.node_expansion_required) {
      if (!ctx.caps.node.has("EXPAND_VOLUME")) fail("node_expansion_required but node EXPAND_VOLUME not advertised");
      await expectOk(
        client.call("Node", "NodeExpandVolume", {
          volume_id: vol.volume_id,
          volume_path: p.target,
          staging_target_path: ctx.staged ? p.staging : "",
          capacity_range: { required_bytes: want },
          volume_capability: ctx.capability(),
        }),
        "NodeExpandVolume",
      );
    }
    const after = kernelSize(ctx, p.target);
    const marker = ctx.readMarker(p.target);
    await ctx.unpublish(vol, p.target);
    await ctx.unstage(vol, p);
    await ctx.deleteVolume(vol.volume_id);
    if (after < before + (want - size) * 0.8) fail(`kernel size ${before} → ${after}, asked for ${want}`);
    if (marker !== `${ctx.tag} before expansion`) fail("data lost in the expansion");
  });
}

async function statsRules(ctx: SuiteContext, vol: Volume, p: VolumePaths): Promise<void> {
  const { t, client } = ctx;
  type Stats = { usage: VolumeUsage[]; volume_condition: { abnormal: boolean; message: string } | null };
  const stats = (over: object) =>
    client.call<Stats>("Node", "NodeGetVolumeStats", {
      volume_id: vol.volume_id,
      volume_path: p.target,
      staging_target_path: ctx.staged ? p.staging : "",
      ...over,
    });
  await t.soft(rule("stats.missing-id", "MUST", "NodeGetVolumeStats without volume_id → INVALID_ARGUMENT"), () =>
    expectCode(stats({ volume_id: "" }), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("stats.missing-path", "MUST", "NodeGetVolumeStats without volume_path → INVALID_ARGUMENT"), () =>
    expectCode(stats({ volume_path: "" }), "INVALID_ARGUMENT"),
  );
  await t.soft(rule("stats.unknown-id", "MUST", "NodeGetVolumeStats of an unknown volume → NOT_FOUND"), () =>
    expectCode(stats({ volume_id: `${ctx.tag}-missing` }), "NOT_FOUND"),
  );
  await t.soft(rule("stats.wrong-path", "MUST", "NodeGetVolumeStats at a path the volume is not at → NOT_FOUND"), () => {
    const elsewhere = join(p.dir, "elsewhere");
    mkdirSync(elsewhere, { recursive: true });
    return expectCode(stats({ volume_path: elsewhere }), "NOT_FOUND");
  });
  await t.soft(
    rule(
      "stats.ok",
      "MUST",
      `usage has BYTES${ctx.settings.accessType === "mount" ? " and INODES" : ""} with total > 0, used ≤ total`,
    ),
    async () => {
      const res = await expectOk(stats({}), "NodeGetVolumeStats");
      const want = ctx.settings.accessType === "mount" ? ["BYTES", "INODES"] : ["BYTES"];
      for (const unit of want) {
        const u = res.usage.find((x) => x.unit === unit);
        if (!u) fail(`no ${unit} entry in ${JSON.stringify(res.usage)}`);
        if (!(u.total > 0)) fail(`${unit} total ${u.total}`);
        if (u.used < 0 || u.available < 0) fail(`${unit} negative: ${JSON.stringify(u)}`);
        if (u.used > u.total) fail(`${unit} used ${u.used} > total ${u.total}`);
      }
      if (ctx.caps.node.has("VOLUME_CONDITION") && !res.volume_condition)
        fail("VOLUME_CONDITION advertised but no volume_condition");
    },
  );
  await t.soft(
    rule("stats.matches-kernel", "SHOULD", "BYTES total is the volume's own size as the kernel reports it"),
    async () => {
      const res = await expectOk(stats({}), "NodeGetVolumeStats");
      const bytes = res.usage.find((x) => x.unit === "BYTES");
      if (!bytes) fail("no BYTES entry");
      const kernel = kernelSize(ctx, p.target);
      // a file system spends some of the device on metadata: allow 10 % either way
      if (Math.abs(bytes.total - kernel) > kernel * 0.1) fail(`reported total ${bytes.total}, kernel says ${kernel}`);
      if (bytes.total > ctx.settings.volumeBytes * 4)
        fail(`total ${bytes.total} is far above the volume size (host file system?)`);
    },
  );
}

async function snapshotDataRules(ctx: SuiteContext, vol: Volume): Promise<void> {
  const { t, client } = ctx;
  await t.soft(
    rule("snapshot.restore-data", "MUST", "a volume restored from a snapshot of a published volume holds its data"),
    async () => {
      const res = await expectOk(
        client.call<{ snapshot: Snapshot }>("Controller", "CreateSnapshot", {
          name: ctx.name("datasnap"),
          source_volume_id: vol.volume_id,
        }),
        "CreateSnapshot",
      );
      ctx.ledger.addSnapshot(res.snapshot.snapshot_id);
      const restored = await expectOk(
        ctx.createVolume(ctx.name("datarestore"), {
          volume_content_source: { snapshot: { snapshot_id: res.snapshot.snapshot_id } },
        }),
        "CreateVolume from snapshot",
      );
      const rp = ctx.paths("datarestore");
      await expectOk(ctx.stage(restored, rp), "NodeStageVolume of the restored volume");
      await expectOk(ctx.publish(restored, rp), "NodePublishVolume of the restored volume");
      const got = ctx.readMarker(rp.target);
      // the restored copy must be independent of its source
      ctx.writeMarker(rp.target, `${ctx.tag} restored`);
      await ctx.unpublish(restored, rp.target);
      await ctx.unstage(restored, rp);
      await ctx.deleteVolume(restored.volume_id);
      await client.call("Controller", "DeleteSnapshot", { snapshot_id: res.snapshot.snapshot_id });
      ctx.ledger.dropSnapshot(res.snapshot.snapshot_id);
      if (got !== `${ctx.tag} original`) fail(`restored volume reads "${got.slice(0, 40)}"`);
    },
  );
}

async function onlineExpandRules(ctx: SuiteContext, vol: Volume, p: VolumePaths): Promise<void> {
  const { t, client } = ctx;
  const r = rule(
    "expand.online",
    "MUST",
    "ControllerExpandVolume (+ NodeExpandVolume) on a published volume grows what the kernel sees",
  );
  if (!ctx.caps.controller.has("EXPAND_VOLUME")) return t.skipRule(r, "EXPAND_VOLUME not advertised");
  if (!ctx.caps.expansion.has("ONLINE")) return t.skipRule(r, "VolumeExpansion ONLINE not advertised");
  const want = ctx.settings.volumeBytes * 2;
  const nodeExpand = (over: object) =>
    client.call("Node", "NodeExpandVolume", {
      volume_id: vol.volume_id,
      volume_path: p.target,
      staging_target_path: ctx.staged ? p.staging : "",
      capacity_range: { required_bytes: want },
      volume_capability: ctx.capability(),
      ...over,
    });
  if (ctx.caps.node.has("EXPAND_VOLUME")) {
    await t.soft(rule("nodeexpand.missing-id", "MUST", "NodeExpandVolume without volume_id → INVALID_ARGUMENT"), () =>
      expectCode(nodeExpand({ volume_id: "" }), "INVALID_ARGUMENT"),
    );
    await t.soft(rule("nodeexpand.missing-path", "MUST", "NodeExpandVolume without volume_path → INVALID_ARGUMENT"), () =>
      expectCode(nodeExpand({ volume_path: "" }), "INVALID_ARGUMENT"),
    );
    await t.soft(rule("nodeexpand.unknown-id", "MUST", "NodeExpandVolume of an unknown volume → NOT_FOUND"), () =>
      expectCode(nodeExpand({ volume_id: `${ctx.tag}-missing` }), "NOT_FOUND"),
    );
  }
  await t.soft(r, async () => {
    const before = kernelSize(ctx, p.target);
    const res = await expectOk(
      client.call<{ capacity_bytes: number; node_expansion_required: boolean }>("Controller", "ControllerExpandVolume", {
        volume_id: vol.volume_id,
        capacity_range: { required_bytes: want },
        volume_capability: ctx.capability(),
      }),
      "ControllerExpandVolume",
    );
    if (res.capacity_bytes < want) fail(`capacity_bytes ${res.capacity_bytes} < ${want}`);
    if (res.node_expansion_required) {
      if (!ctx.caps.node.has("EXPAND_VOLUME")) fail("node_expansion_required but node EXPAND_VOLUME not advertised");
      await expectOk(nodeExpand({}), "NodeExpandVolume");
    }
    const after = kernelSize(ctx, p.target);
    // the file system keeps some for itself; require most of the growth to be visible
    if (after < before + (want - ctx.settings.volumeBytes) * 0.8) fail(`kernel size ${before} → ${after}, asked for ${want}`);
    if (ctx.readMarker(p.target) !== `${ctx.tag} original`) fail("data lost in the expansion");
  });
}
