// SELF-TEST FIXTURE, not a driver: the smallest CSI plugin that follows the spec, used only to
// check the conformance suite itself (suite.test.ts). Directory volumes on size-limited tmpfs,
// bind-mounted on publish; snapshots are copies. Mount access only.
// `plantBug` switches on one deliberate spec violation so the self-test can prove the suite sees it.
// biome-ignore-all lint/suspicious/noExplicitAny: requests arrive as untyped decoded protobuf objects; this is a test fixture
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, statfsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export type PlantedBug = "create-not-idempotent" | "delete-unknown-fails" | "unpublish-leaves-target";

class RpcError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}
const invalid = (m: string) => new RpcError(grpc.status.INVALID_ARGUMENT, m);
const notFound = (m: string) => new RpcError(grpc.status.NOT_FOUND, m);

interface FixtureVolume {
  id: string;
  name: string;
  capacity: number;
  dir: string;
  source: object | null;
}

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });

export async function startFixtureDriver(opts: { socket: string; dataDir: string; plantBug?: PlantedBug }) {
  const def = protoLoader.loadSync(fileURLToPath(new URL("./csi.proto", import.meta.url)), {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = (grpc.loadPackageDefinition(def).csi as grpc.GrpcObject).v1 as Record<string, grpc.ServiceClientConstructor>;
  mkdirSync(opts.dataDir, { recursive: true });
  const volumes = new Map<string, FixtureVolume>();
  const snapshots = new Map<string, { id: string; name: string; source: string; dir: string; size: number; at: number }>();
  const published = new Map<string, { volumeId: string; readonly: boolean }>();
  const staged = new Map<string, string>();
  let seq = 0;

  const volumeOf = (id: string) => {
    if (!id) throw invalid("volume_id is required");
    const v = volumes.get(id);
    if (!v) throw notFound(`volume ${id} does not exist`);
    return v;
  };
  const checkCaps = (caps: any[]) => {
    if (!caps?.length) throw invalid("volume_capabilities is required");
    for (const c of caps) checkCap(c);
  };
  const checkCap = (c: any) => {
    if (!c) throw invalid("volume_capability is required");
    if (!c.mount && !c.block) throw invalid("access_type is required");
    if (!c.access_mode || c.access_mode.mode === "UNKNOWN") throw invalid("access_mode is required");
    if (c.block) throw invalid("block access is not supported by the fixture");
  };
  const page = <T>(all: T[], req: { max_entries: number; starting_token: string }) => {
    if (req.max_entries < 0) throw invalid("max_entries is negative");
    if (req.starting_token && !/^\d+$/.test(req.starting_token)) throw new RpcError(grpc.status.ABORTED, "bad starting_token");
    const start = req.starting_token ? Number(req.starting_token) : 0;
    if (start > all.length) throw new RpcError(grpc.status.ABORTED, "starting_token past the end");
    const end = req.max_entries ? Math.min(all.length, start + req.max_entries) : all.length;
    return { entries: all.slice(start, end), next_token: end < all.length ? String(end) : "" };
  };
  const sizeOf = (range: any, fallback: number) => {
    const req = range?.required_bytes ?? 0;
    const lim = range?.limit_bytes ?? 0;
    if (req < 0 || lim < 0) throw invalid("capacity must not be negative");
    if (lim && req > lim) throw new RpcError(grpc.status.OUT_OF_RANGE, "required_bytes > limit_bytes");
    if (req > 2 ** 40) throw new RpcError(grpc.status.OUT_OF_RANGE, "larger than the fixture allows");
    return req || lim || fallback;
  };
  const toVolume = (v: FixtureVolume) => ({
    volume_id: v.id,
    capacity_bytes: v.capacity,
    volume_context: {},
    content_source: v.source,
  });

  const identity = {
    GetPluginInfo: async () => ({ name: "fixture.csi.berth.example", vendor_version: "0.0.1" }),
    GetPluginCapabilities: async () => ({
      capabilities: [{ service: { type: "CONTROLLER_SERVICE" } }, { volume_expansion: { type: "ONLINE" } }],
    }),
    Probe: async () => ({ ready: { value: true } }),
  };
  const controller = {
    ControllerGetCapabilities: async () => ({
      capabilities: [
        "CREATE_DELETE_VOLUME",
        "LIST_VOLUMES",
        "GET_CAPACITY",
        "CREATE_DELETE_SNAPSHOT",
        "LIST_SNAPSHOTS",
        "GET_VOLUME",
        "GET_SNAPSHOT",
        "EXPAND_VOLUME",
      ].map((type) => ({ rpc: { type } })),
    }),
    CreateVolume: async (r: any) => {
      if (!r.name) throw invalid("name is required");
      checkCaps(r.volume_capabilities);
      let capacity = sizeOf(r.capacity_range, 16 << 20);
      const existing = [...volumes.values()].find((v) => v.name === r.name);
      if (existing && opts.plantBug !== "create-not-idempotent") {
        if (existing.capacity !== capacity) throw new RpcError(grpc.status.ALREADY_EXISTS, "same name, other capacity");
        return { volume: toVolume(existing) };
      }
      const snapId = r.volume_content_source?.snapshot?.snapshot_id;
      if (r.volume_content_source?.volume) throw invalid("cloning is not supported");
      const snap = snapId !== undefined ? snapshots.get(snapId) : undefined;
      if (snapId !== undefined && !snap) throw notFound(`snapshot ${snapId} does not exist`);
      if (snap) {
        if (r.capacity_range?.limit_bytes && r.capacity_range.limit_bytes < snap.size)
          throw new RpcError(grpc.status.OUT_OF_RANGE, "smaller than the snapshot");
        capacity = Math.max(capacity, snap.size);
      }
      const id = `fx-${++seq}`;
      const dir = join(opts.dataDir, id);
      mkdirSync(dir);
      run("mount", ["-t", "tmpfs", "-o", `size=${capacity}`, "tmpfs", dir]);
      if (snap) run("cp", ["-a", `${snap.dir}/.`, dir]);
      const v = { id, name: r.name, capacity, dir, source: snap ? { snapshot: { snapshot_id: snap.id } } : null };
      volumes.set(id, v);
      return { volume: toVolume(v) };
    },
    DeleteVolume: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      const v = volumes.get(r.volume_id);
      if (!v) {
        if (opts.plantBug === "delete-unknown-fails") throw notFound("no such volume");
        return {};
      }
      if ([...published.values()].some((p) => p.volumeId === v.id))
        throw new RpcError(grpc.status.FAILED_PRECONDITION, "published");
      run("umount", [v.dir]);
      rmSync(v.dir, { recursive: true });
      volumes.delete(v.id);
      return {};
    },
    ValidateVolumeCapabilities: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      if (!r.volume_capabilities?.length) throw invalid("volume_capabilities is required");
      volumeOf(r.volume_id);
      try {
        checkCaps(r.volume_capabilities);
      } catch (e) {
        return { message: (e as Error).message };
      }
      return { confirmed: { volume_capabilities: r.volume_capabilities } };
    },
    ListVolumes: async (r: any) => {
      const p = page([...volumes.values()], r);
      return { entries: p.entries.map((v) => ({ volume: toVolume(v) })), next_token: p.next_token };
    },
    ControllerGetVolume: async (r: any) => ({ volume: toVolume(volumeOf(r.volume_id)), status: { published_node_ids: [] } }),
    GetCapacity: async () => ({ available_capacity: 2 ** 40 }),
    CreateSnapshot: async (r: any) => {
      if (!r.name) throw invalid("name is required");
      if (!r.source_volume_id) throw invalid("source_volume_id is required");
      const existing = [...snapshots.values()].find((s) => s.name === r.name);
      if (existing) {
        if (existing.source !== r.source_volume_id) throw new RpcError(grpc.status.ALREADY_EXISTS, "same name, other source");
        return { snapshot: toSnapshot(existing) };
      }
      const v = volumeOf(r.source_volume_id);
      const id = `fxs-${++seq}`;
      const dir = join(opts.dataDir, id);
      mkdirSync(dir);
      run("cp", ["-a", `${v.dir}/.`, dir]);
      const s = { id, name: r.name, source: v.id, dir, size: v.capacity, at: Date.now() };
      snapshots.set(id, s);
      return { snapshot: toSnapshot(s) };
    },
    DeleteSnapshot: async (r: any) => {
      if (!r.snapshot_id) throw invalid("snapshot_id is required");
      const s = snapshots.get(r.snapshot_id);
      if (s) {
        rmSync(s.dir, { recursive: true });
        snapshots.delete(s.id);
      }
      return {};
    },
    ListSnapshots: async (r: any) => {
      const all = [...snapshots.values()].filter(
        (s) => (!r.snapshot_id || s.id === r.snapshot_id) && (!r.source_volume_id || s.source === r.source_volume_id),
      );
      const p = page(all, r);
      return { entries: p.entries.map((s) => ({ snapshot: toSnapshot(s) })), next_token: p.next_token };
    },
    GetSnapshot: async (r: any) => {
      const s = snapshots.get(r.snapshot_id);
      if (!s) throw notFound("no such snapshot");
      return { snapshot: toSnapshot(s) };
    },
    ControllerExpandVolume: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      if (!r.capacity_range) throw invalid("capacity_range is required");
      const v = volumeOf(r.volume_id);
      const want = sizeOf(r.capacity_range, v.capacity);
      if (want > v.capacity) {
        run("mount", ["-o", `remount,size=${want}`, v.dir]);
        v.capacity = want;
      }
      return { capacity_bytes: v.capacity, node_expansion_required: false };
    },
  };
  const toSnapshot = (s: { id: string; source: string; size: number; at: number }) => ({
    snapshot_id: s.id,
    source_volume_id: s.source,
    size_bytes: s.size,
    ready_to_use: true,
    creation_time: { seconds: Math.floor(s.at / 1000), nanos: 0 },
  });
  const node = {
    NodeGetCapabilities: async () => ({
      capabilities: ["STAGE_UNSTAGE_VOLUME", "GET_VOLUME_STATS", "EXPAND_VOLUME"].map((type) => ({ rpc: { type } })),
    }),
    NodeGetInfo: async () => ({ node_id: "fixture-node" }),
    NodeStageVolume: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      if (!r.staging_target_path) throw invalid("staging_target_path is required");
      checkCap(r.volume_capability);
      volumeOf(r.volume_id);
      staged.set(r.staging_target_path, r.volume_id);
      return {};
    },
    NodeUnstageVolume: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      if (!r.staging_target_path) throw invalid("staging_target_path is required");
      staged.delete(r.staging_target_path);
      return {};
    },
    NodePublishVolume: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      if (!r.target_path) throw invalid("target_path is required");
      checkCap(r.volume_capability);
      const v = volumeOf(r.volume_id);
      if (!r.staging_target_path || staged.get(r.staging_target_path) !== v.id)
        throw new RpcError(grpc.status.FAILED_PRECONDITION, "not staged at staging_target_path");
      const here = published.get(r.target_path);
      if (here) {
        if (here.volumeId !== v.id || here.readonly !== r.readonly)
          throw new RpcError(grpc.status.ALREADY_EXISTS, "published differently");
        return {};
      }
      if ([...published.values()].some((p) => p.volumeId === v.id))
        throw new RpcError(grpc.status.FAILED_PRECONDITION, "single-node writer already published");
      mkdirSync(r.target_path, { recursive: true });
      run("mount", ["--bind", v.dir, r.target_path]);
      if (r.readonly) run("mount", ["-o", "remount,bind,ro", r.target_path]);
      published.set(r.target_path, { volumeId: v.id, readonly: r.readonly });
      return {};
    },
    NodeUnpublishVolume: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      if (!r.target_path) throw invalid("target_path is required");
      if (published.has(r.target_path)) {
        run("umount", [r.target_path]);
        if (opts.plantBug !== "unpublish-leaves-target") rmSync(r.target_path, { recursive: true });
        published.delete(r.target_path);
      }
      return {};
    },
    NodeGetVolumeStats: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      if (!r.volume_path) throw invalid("volume_path is required");
      volumeOf(r.volume_id);
      if (published.get(r.volume_path)?.volumeId !== r.volume_id)
        throw notFound(`volume ${r.volume_id} is not at ${r.volume_path}`);
      const s = statfsSync(r.volume_path);
      return {
        usage: [
          { unit: "BYTES", total: s.blocks * s.bsize, available: s.bavail * s.bsize, used: (s.blocks - s.bfree) * s.bsize },
          { unit: "INODES", total: s.files, available: s.ffree, used: s.files - s.ffree },
        ],
      };
    },
    NodeExpandVolume: async (r: any) => {
      if (!r.volume_id) throw invalid("volume_id is required");
      if (!r.volume_path) throw invalid("volume_path is required");
      return { capacity_bytes: volumeOf(r.volume_id).capacity };
    },
  };

  // Every handler is async and may throw RpcError; calls are serialised, as a real driver's
  // per-volume lock would, so that the fixture's maps never race.
  let queue = Promise.resolve();
  const wrap = (impl: Record<string, (r: any) => Promise<object>>) =>
    Object.fromEntries(
      Object.entries(impl).map(([name, fn]) => [
        name,
        (call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) => {
          queue = queue.then(() =>
            fn(call.request).then(
              (res) => cb(null, res),
              (e: unknown) =>
                cb({
                  code: e instanceof RpcError ? e.code : grpc.status.INTERNAL,
                  details: (e as Error).message || "internal error",
                }),
            ),
          );
        },
      ]),
    );
  const server = new grpc.Server();
  server.addService(pkg.Identity!.service, wrap(identity));
  server.addService(pkg.Controller!.service, wrap(controller));
  server.addService(pkg.Node!.service, wrap(node));
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${opts.socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  return {
    /** Stops serving and removes whatever volumes were left (the suite should have left none). */
    async stop(): Promise<void> {
      await new Promise<void>((resolve) => {
        // a client that never closes its channel must not keep the fixture alive
        const force = setTimeout(() => server.forceShutdown(), 2000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      for (const target of published.keys()) execFileSync("umount", ["-l", target], { stdio: "ignore" });
      for (const v of volumes.values()) execFileSync("umount", ["-l", v.dir], { stdio: "ignore" });
      rmSync(opts.dataDir, { recursive: true, force: true });
      rmSync(opts.socket, { force: true });
    },
    leftVolumes: () => volumes.size + snapshots.size,
  };
}
