// Controller service: volumes and snapshots as image files in the data dir, recorded in SQLite.
import { randomUUID } from "node:crypto";
import { closeSync, existsSync, fsyncSync, openSync } from "node:fs";
import { statFs } from "../native/fs.ts";
import { refreshLoopCapacity } from "../native/loop.ts";
import { isMountPoint } from "../native/mount.ts";
import { GiB, minimumSize } from "./backing.ts";
import { type Driver, filesystemMountPoint, findVolume, TOPOLOGY_KEY, volumeCondition, volumeContext } from "./driver.ts";
import {
  aborted,
  alreadyExists,
  CsiError,
  failedPrecondition,
  invalidArgument,
  notFound,
  outOfRange,
  resourceExhausted,
} from "./errors.ts";
import type { CapacityRange__Output } from "./proto/generated/csi/v1/CapacityRange.ts";
import type { ControllerExpandVolumeRequest__Output } from "./proto/generated/csi/v1/ControllerExpandVolumeRequest.ts";
import type { ControllerExpandVolumeResponse } from "./proto/generated/csi/v1/ControllerExpandVolumeResponse.ts";
import type { ControllerGetVolumeRequest__Output } from "./proto/generated/csi/v1/ControllerGetVolumeRequest.ts";
import type { ControllerGetVolumeResponse } from "./proto/generated/csi/v1/ControllerGetVolumeResponse.ts";
import type { CreateSnapshotRequest__Output } from "./proto/generated/csi/v1/CreateSnapshotRequest.ts";
import type { CreateSnapshotResponse } from "./proto/generated/csi/v1/CreateSnapshotResponse.ts";
import type { CreateVolumeRequest__Output } from "./proto/generated/csi/v1/CreateVolumeRequest.ts";
import type { CreateVolumeResponse } from "./proto/generated/csi/v1/CreateVolumeResponse.ts";
import type { DeleteSnapshotRequest__Output } from "./proto/generated/csi/v1/DeleteSnapshotRequest.ts";
import type { DeleteVolumeRequest__Output } from "./proto/generated/csi/v1/DeleteVolumeRequest.ts";
import type { GetCapacityRequest__Output } from "./proto/generated/csi/v1/GetCapacityRequest.ts";
import type { GetCapacityResponse } from "./proto/generated/csi/v1/GetCapacityResponse.ts";
import type { GetSnapshotRequest__Output } from "./proto/generated/csi/v1/GetSnapshotRequest.ts";
import type { GetSnapshotResponse } from "./proto/generated/csi/v1/GetSnapshotResponse.ts";
import type { ListSnapshotsRequest__Output } from "./proto/generated/csi/v1/ListSnapshotsRequest.ts";
import type { ListSnapshotsResponse } from "./proto/generated/csi/v1/ListSnapshotsResponse.ts";
import type { ListVolumesRequest__Output } from "./proto/generated/csi/v1/ListVolumesRequest.ts";
import type { ListVolumesResponse } from "./proto/generated/csi/v1/ListVolumesResponse.ts";
import type { Snapshot } from "./proto/generated/csi/v1/Snapshot.ts";
import type { ValidateVolumeCapabilitiesRequest__Output } from "./proto/generated/csi/v1/ValidateVolumeCapabilitiesRequest.ts";
import type { ValidateVolumeCapabilitiesResponse } from "./proto/generated/csi/v1/ValidateVolumeCapabilitiesResponse.ts";
import type { Volume } from "./proto/generated/csi/v1/Volume.ts";
import type { SnapshotRow, VolumeKind, VolumeRow } from "./state.ts";
import { type AccessType, type Capability, checkMap, isOurId, parseCapabilities, requireId, requireName } from "./validate.ts";
import { discardVolume, materialize } from "./volumes.ts";

export const DEFAULT_SIZE = 1 * GiB;
const ALIGN = 4096;
// Keys the CO's provisioner may add; they carry no meaning for the volume.
const CO_PARAMETER_PREFIX = "csi.storage.k8s.io/";
/** The StorageClass (CreateVolume) parameters berth reads, with their line in the configuration reference. */
export const VOLUME_PARAMETERS: Readonly<Record<string, string>> = {
  kind: '"dir" (default): a directory, bind-mounted, mount access only; "block": a sparse file on a loop device, raw block or formatted with the capability\'s fsType (default ext4)',
};
const KNOWN_PARAMETERS = new Set(Object.keys(VOLUME_PARAMETERS));

interface VolumeShape {
  kind: VolumeKind;
  fsType: string;
  accessTypes: AccessType[];
  parameters: Record<string, string>;
}

function parseKind(parameters: Record<string, string>): VolumeKind {
  const kind = parameters.kind ?? "dir";
  if (kind !== "dir" && kind !== "block")
    throw invalidArgument(`parameter kind must be "dir" or "block", got ${JSON.stringify(kind)}`);
  return kind;
}

/** The volume a set of capabilities and parameters asks for. */
export function volumeShape(caps: Capability[], rawParameters: Record<string, string>): VolumeShape {
  const parameters: Record<string, string> = {};
  for (const [k, v] of Object.entries(rawParameters)) {
    if (k.startsWith(CO_PARAMETER_PREFIX)) continue;
    if (!KNOWN_PARAMETERS.has(k))
      throw invalidArgument(`unknown parameter ${JSON.stringify(k)} (known: ${[...KNOWN_PARAMETERS].join(", ")})`);
    parameters[k] = v;
  }
  const kind = parseKind(parameters);
  parameters.kind = kind;
  const accessTypes = [...new Set(caps.map((c) => c.accessType))].sort();
  if (kind === "dir" && accessTypes.includes("block")) throw invalidArgument("kind dir volumes support only mount access");
  const fsTypes = new Set(caps.filter((c) => c.accessType === "mount").map((c) => c.fsType || "ext4"));
  if (fsTypes.size > 1) throw invalidArgument(`capabilities ask for different filesystems: ${[...fsTypes].join(", ")}`);
  const fsType = kind === "dir" ? ([...fsTypes][0] ?? "ext4") : ([...fsTypes][0] ?? "");
  return { kind, fsType, accessTypes, parameters };
}

function toBytes(field: string, value: string | undefined): number {
  const n = Number(value ?? "0");
  if (!Number.isFinite(n) || n < 0) throw invalidArgument(`${field} must not be negative`);
  return n;
}

function alignUp(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

/** Picks the size: honours required/limit, never below what the filesystem needs. */
export function chooseSize(range: CapacityRange__Output | null, fsType: string, atLeast = 0): number {
  const required = toBytes("capacity_range.required_bytes", range?.required_bytes);
  const limit = toBytes("capacity_range.limit_bytes", range?.limit_bytes);
  if (limit && required > limit) throw outOfRange("capacity_range.required_bytes exceeds limit_bytes");
  let size = required || (limit ? Math.min(DEFAULT_SIZE, limit) : DEFAULT_SIZE);
  size = alignUp(Math.max(size, minimumSize(fsType), atLeast));
  if (limit && size > limit) {
    // Aligned up past the limit: the aligned-down value may still satisfy both ends.
    const down = Math.floor(limit / ALIGN) * ALIGN;
    if (down >= Math.max(required, minimumSize(fsType), atLeast)) return down;
    throw outOfRange(`no volume size fits: needs at least ${Math.max(minimumSize(fsType), atLeast)} bytes, limit is ${limit}`);
  }
  return size;
}

const TOKEN_PREFIX = "berth1:";

function encodeToken(lastId: string): string {
  return Buffer.from(TOKEN_PREFIX + lastId).toString("base64url");
}

function decodeToken(token: string, kind: "vol" | "snap"): string {
  if (!token) return "";
  const text = Buffer.from(token, "base64url").toString("utf8");
  const id = text.startsWith(TOKEN_PREFIX) ? text.slice(TOKEN_PREFIX.length) : "";
  if (!isOurId(kind, id)) throw aborted(`starting_token ${JSON.stringify(token)} is not a token this driver issued`);
  return id;
}

export function timestamp(ms: number) {
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

export class ControllerService {
  constructor(private readonly d: Driver) {}

  private volumeMessage(v: VolumeRow): Volume {
    return {
      capacity_bytes: String(v.capacity),
      volume_id: v.id,
      volume_context: volumeContext(v),
      content_source:
        v.sourceType === "snapshot"
          ? { snapshot: { snapshot_id: v.sourceId } }
          : v.sourceType === "volume"
            ? { volume: { volume_id: v.sourceId } }
            : null,
      accessible_topology: [{ segments: { [TOPOLOGY_KEY]: this.d.nodeId } }],
    };
  }

  snapshotMessage(s: SnapshotRow): Snapshot {
    return {
      size_bytes: String(s.size),
      snapshot_id: s.id,
      source_volume_id: s.sourceVolumeId,
      creation_time: timestamp(s.createdAt),
      ready_to_use: s.status === "ready",
      group_snapshot_id: s.groupSnapshotId,
    };
  }

  /** Space promised to sparse images but not yet allocated on the data dir. */
  private promisedBytes(): number {
    let promised = 0;
    for (const v of this.d.store.volumes()) {
      if (v.status === "deleting") continue;
      promised += Math.max(0, v.capacity - this.d.backing.allocatedBytes(this.d.backing.imagePath(v.id)));
    }
    return promised;
  }

  availableCapacity(): number {
    // bavail: what new image blocks can actually use.
    return Math.max(0, statFs(this.d.backing.dataDir).bytes.available - this.promisedBytes());
  }

  async createVolume(req: CreateVolumeRequest__Output): Promise<CreateVolumeResponse> {
    const name = requireName("name", req.name);
    const caps = parseCapabilities("volume_capabilities", req.volume_capabilities);
    checkMap("parameters", req.parameters);
    checkMap("secrets", req.secrets);
    checkMap("mutable_parameters", req.mutable_parameters);
    if (Object.keys(req.mutable_parameters ?? {}).length > 0) throw invalidArgument("mutable_parameters are not supported");
    const shape = volumeShape(caps, req.parameters ?? {});
    let sourceType: VolumeRow["sourceType"] = "";
    let sourceId = "";
    const src = req.volume_content_source;
    if (src?.snapshot) {
      sourceType = "snapshot";
      sourceId = requireId("volume_content_source.snapshot.snapshot_id", src.snapshot.snapshot_id);
    } else if (src?.volume) {
      sourceType = "volume";
      sourceId = requireId("volume_content_source.volume.volume_id", src.volume.volume_id);
    }
    const requisite = req.accessibility_requirements?.requisite ?? [];
    if (requisite.length > 0 && !requisite.some((t) => t.segments?.[TOPOLOGY_KEY] === this.d.nodeId)) {
      throw resourceExhausted(`this driver serves only ${TOPOLOGY_KEY}=${this.d.nodeId}`);
    }
    // Size checks that do not depend on the source run before any lookup.
    chooseSize(req.capacity_range, shape.fsType);

    return this.d.locks.with([`name:${name}`, sourceId], async () => {
      const existing = this.d.store.volumeByName(name);
      if (existing?.status === "ready") {
        this.checkCompatible(existing, shape, req.capacity_range, sourceType, sourceId);
        return { volume: this.volumeMessage(existing) };
      }
      if (existing) discardVolume(this.d, existing); // a create or delete that crashed midway

      let sourceImage = "";
      let frozen: string | undefined;
      let sourceSize = 0;
      if (sourceType === "snapshot") {
        const snap = isOurId("snap", sourceId) ? this.d.store.snapshot(sourceId) : undefined;
        if (snap?.status !== "ready") throw notFound(`snapshot ${sourceId} does not exist`);
        if (snap.kind !== shape.kind || snap.fsType !== shape.fsType) {
          throw invalidArgument(
            `snapshot ${sourceId} holds a ${snap.kind}/${snap.fsType || "raw"} volume, not ${shape.kind}/${shape.fsType || "raw"}`,
          );
        }
        sourceImage = this.d.backing.snapshotPath(snap.id);
        sourceSize = snap.size;
      } else if (sourceType === "volume") {
        const sv = isOurId("vol", sourceId) ? this.d.store.volume(sourceId) : undefined;
        if (sv?.status !== "ready") throw notFound(`volume ${sourceId} does not exist`);
        if (sv.kind !== shape.kind || sv.fsType !== shape.fsType) {
          throw invalidArgument(
            `volume ${sourceId} is ${sv.kind}/${sv.fsType || "raw"}, not ${shape.kind}/${shape.fsType || "raw"}`,
          );
        }
        sourceImage = this.d.backing.imagePath(sv.id);
        sourceSize = sv.capacity;
        frozen = this.mountedFilesystem(sv);
      }
      const size = chooseSize(req.capacity_range, shape.fsType, sourceSize);
      if (size > this.availableCapacity()) {
        throw resourceExhausted(`not enough space in ${this.d.backing.dataDir} for ${size} bytes`);
      }
      const v: VolumeRow = {
        id: `vol-${randomUUID()}`,
        name,
        kind: shape.kind,
        capacity: size,
        fsType: shape.fsType,
        accessTypes: shape.accessTypes,
        parameters: shape.parameters,
        sourceType,
        sourceId,
        ephemeral: false,
        status: "creating",
        condition: "",
        createdAt: Date.now(),
      };
      await materialize(this.d, v, sourceImage, frozen);
      return { volume: this.volumeMessage(v) };
    });
  }

  private checkCompatible(
    v: VolumeRow,
    shape: VolumeShape,
    range: CapacityRange__Output | null,
    sourceType: string,
    sourceId: string,
  ): void {
    const required = toBytes("capacity_range.required_bytes", range?.required_bytes);
    const limit = toBytes("capacity_range.limit_bytes", range?.limit_bytes);
    const why: string[] = [];
    if (v.capacity < required || (limit && v.capacity > limit)) why.push(`capacity ${v.capacity}`);
    if (v.kind !== shape.kind) why.push(`kind ${v.kind}`);
    if (v.fsType !== shape.fsType) why.push(`filesystem ${v.fsType || "none"}`);
    if (v.accessTypes.join() !== shape.accessTypes.join()) why.push(`access types ${v.accessTypes.join("+")}`);
    if (JSON.stringify(sortKeys(v.parameters)) !== JSON.stringify(sortKeys(shape.parameters))) why.push("parameters");
    if (v.sourceType !== sourceType || v.sourceId !== sourceId) why.push("content source");
    if (why.length > 0) throw alreadyExists(`volume named ${JSON.stringify(v.name)} exists with different ${why.join(", ")}`);
  }

  /** The mount point of the volume's filesystem when it is in use (frozen while copied). */
  private mountedFilesystem(v: VolumeRow): string | undefined {
    const mp = filesystemMountPoint(this.d, v);
    if (mp && isMountPoint(mp)) return mp;
    if (!v.fsType) {
      // Raw block in use: flush the loop device's cache so the copy sees every write.
      const loop = this.d.backing.loopFor(this.d.backing.imagePath(v.id));
      if (loop) {
        const fd = openSync(loop.device, "r");
        try {
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
      }
    }
    return undefined;
  }

  async deleteVolume(req: DeleteVolumeRequest__Output): Promise<Record<string, never>> {
    const id = requireId("volume_id", req.volume_id);
    checkMap("secrets", req.secrets);
    if (!isOurId("vol", id)) return {};
    return this.d.locks.with([id], async () => {
      const v = this.d.store.volume(id);
      if (!v) return {};
      if (this.d.store.staging(id) || this.d.store.publications(id).length > 0) {
        throw failedPrecondition(`volume ${id} is staged or published on node ${this.d.nodeId}`);
      }
      discardVolume(this.d, v);
      this.d.log.info({ volumeId: id }, "volume deleted");
      return {};
    });
  }

  async validateVolumeCapabilities(req: ValidateVolumeCapabilitiesRequest__Output): Promise<ValidateVolumeCapabilitiesResponse> {
    const id = requireId("volume_id", req.volume_id);
    if (!req.volume_capabilities || req.volume_capabilities.length === 0)
      throw invalidArgument("volume_capabilities is required");
    const v = findVolume(this.d, id);
    if (!v) throw notFound(`volume ${id} does not exist`);
    let shape: VolumeShape;
    try {
      shape = volumeShape(parseCapabilities("volume_capabilities", req.volume_capabilities), req.parameters ?? { kind: v.kind });
    } catch (e) {
      if (e instanceof CsiError) return { message: e.message };
      throw e;
    }
    if (shape.kind !== v.kind) return { message: `volume is kind ${v.kind}` };
    if (shape.accessTypes.some((t) => !v.accessTypes.includes(t)))
      return { message: `volume supports ${v.accessTypes.join(", ")} access` };
    if (shape.fsType && shape.fsType !== v.fsType) return { message: `volume holds ${v.fsType || "no filesystem"}` };
    return {
      confirmed: {
        volume_context: req.volume_context,
        volume_capabilities: req.volume_capabilities,
        parameters: req.parameters,
        mutable_parameters: req.mutable_parameters,
      },
    };
  }

  async listVolumes(req: ListVolumesRequest__Output): Promise<ListVolumesResponse> {
    if (req.max_entries < 0) throw invalidArgument("max_entries must not be negative");
    const after = decodeToken(req.starting_token, "vol");
    const limit = req.max_entries > 0 ? req.max_entries : 1000;
    const entries: ListVolumesResponse["entries"] = [];
    let last = after;
    let more = false;
    // Page through rows skipping ephemeral and half-made volumes.
    for (;;) {
      const rows = this.d.store.volumes(last, limit + 1);
      for (const v of rows) {
        if (entries.length === limit) {
          more = true;
          break;
        }
        last = v.id;
        if (v.status !== "ready" || v.ephemeral) continue;
        entries.push({ volume: this.volumeMessage(v), status: this.volumeStatus(v) });
      }
      if (more || rows.length < limit + 1) break;
    }
    return { entries, next_token: more ? encodeToken(last) : "" };
  }

  private volumeStatus(v: VolumeRow) {
    return {
      published_node_ids: this.d.store.publications(v.id).length > 0 ? [this.d.nodeId] : [],
      volume_condition: volumeCondition(this.d, v),
    };
  }

  async controllerGetVolume(req: ControllerGetVolumeRequest__Output): Promise<ControllerGetVolumeResponse> {
    const id = requireId("volume_id", req.volume_id);
    const v = isOurId("vol", id) ? findVolume(this.d, id) : undefined;
    if (!v) throw notFound(`volume ${id} does not exist`);
    return { volume: this.volumeMessage(v), status: this.volumeStatus(v) };
  }

  async getCapacity(req: GetCapacityRequest__Output): Promise<GetCapacityResponse> {
    const caps = req.volume_capabilities?.length
      ? parseCapabilities("volume_capabilities", req.volume_capabilities, { requireMode: false })
      : [];
    const shape = volumeShape(caps, req.parameters ?? {});
    const segment = req.accessible_topology?.segments?.[TOPOLOGY_KEY];
    if (segment !== undefined && segment !== this.d.nodeId) return { available_capacity: "0" };
    const available = this.availableCapacity();
    return {
      available_capacity: String(available),
      maximum_volume_size: { value: String(available) },
      minimum_volume_size: { value: String(minimumSize(shape.fsType)) },
    };
  }

  async createSnapshot(req: CreateSnapshotRequest__Output): Promise<CreateSnapshotResponse> {
    const sourceId = requireId("source_volume_id", req.source_volume_id);
    const name = requireName("name", req.name);
    checkMap("parameters", req.parameters);
    checkMap("secrets", req.secrets);
    if (Object.keys(req.parameters ?? {}).some((k) => !k.startsWith(CO_PARAMETER_PREFIX))) {
      throw invalidArgument("CreateSnapshot takes no parameters");
    }
    return this.d.locks.with([`snapshot-name:${name}`, sourceId], async () => {
      const existing = this.d.store.snapshotByName(name);
      if (existing?.status === "ready") {
        if (existing.sourceVolumeId !== sourceId) {
          throw alreadyExists(`snapshot named ${JSON.stringify(name)} exists for volume ${existing.sourceVolumeId}`);
        }
        return { snapshot: this.snapshotMessage(existing) };
      }
      if (existing) {
        this.d.backing.removeFile(this.d.backing.snapshotPath(existing.id));
        this.d.store.deleteSnapshot(existing.id);
      }
      const v = isOurId("vol", sourceId) ? findVolume(this.d, sourceId) : undefined;
      if (!v) throw notFound(`volume ${sourceId} does not exist`);
      const used = this.d.backing.allocatedBytes(this.d.backing.imagePath(v.id));
      if (used > this.availableCapacity())
        throw resourceExhausted(`not enough space in ${this.d.backing.dataDir} for a snapshot`);
      const s: SnapshotRow = {
        id: `snap-${randomUUID()}`,
        name,
        sourceVolumeId: v.id,
        size: v.capacity,
        fsType: v.fsType,
        kind: v.kind,
        status: "creating",
        createdAt: Date.now(),
        groupSnapshotId: "",
      };
      this.d.store.insertSnapshot(s);
      const file = this.d.backing.snapshotPath(s.id);
      try {
        const method = await this.d.backing.copyImage(this.d.backing.imagePath(v.id), file, this.mountedFilesystem(v));
        this.d.store.setSnapshotStatus(s.id, "ready");
        s.status = "ready";
        this.d.log.info({ snapshotId: s.id, volumeId: v.id, method }, "snapshot cut");
      } catch (e) {
        this.d.backing.removeFile(file);
        this.d.store.deleteSnapshot(s.id);
        throw e;
      }
      return { snapshot: this.snapshotMessage(s) };
    });
  }

  async deleteSnapshot(req: DeleteSnapshotRequest__Output): Promise<Record<string, never>> {
    const id = requireId("snapshot_id", req.snapshot_id);
    checkMap("secrets", req.secrets);
    if (!isOurId("snap", id)) return {};
    return this.d.locks.with([id], async () => {
      const s = this.d.store.snapshot(id);
      if (!s) return {};
      if (s.groupSnapshotId) {
        throw invalidArgument(`snapshot ${id} belongs to group snapshot ${s.groupSnapshotId}; delete the group instead`);
      }
      this.d.store.setSnapshotStatus(id, "deleting");
      this.d.backing.removeFile(this.d.backing.snapshotPath(id));
      this.d.store.deleteSnapshot(id);
      return {};
    });
  }

  async listSnapshots(req: ListSnapshotsRequest__Output): Promise<ListSnapshotsResponse> {
    if (req.max_entries < 0) throw invalidArgument("max_entries must not be negative");
    if (req.snapshot_id) requireId("snapshot_id", req.snapshot_id);
    if (req.source_volume_id) requireId("source_volume_id", req.source_volume_id);
    const after = decodeToken(req.starting_token, "snap");
    const limit = req.max_entries > 0 ? req.max_entries : 1000;
    const rows = this.d.store.snapshots({ sourceVolumeId: req.source_volume_id, snapshotId: req.snapshot_id }, after, limit + 1);
    const page = rows.slice(0, limit);
    return {
      entries: page.map((s) => ({ snapshot: this.snapshotMessage(s) })),
      next_token: rows.length > limit && page.length > 0 ? encodeToken(page[page.length - 1]!.id) : "",
    };
  }

  async getSnapshot(req: GetSnapshotRequest__Output): Promise<GetSnapshotResponse> {
    const id = requireId("snapshot_id", req.snapshot_id);
    const s = isOurId("snap", id) ? this.d.store.snapshot(id) : undefined;
    if (s?.status !== "ready") throw notFound(`snapshot ${id} does not exist`);
    return { snapshot: this.snapshotMessage(s) };
  }

  async controllerExpandVolume(req: ControllerExpandVolumeRequest__Output): Promise<ControllerExpandVolumeResponse> {
    const id = requireId("volume_id", req.volume_id);
    if (!req.capacity_range) throw invalidArgument("capacity_range is required");
    const required = toBytes("capacity_range.required_bytes", req.capacity_range.required_bytes);
    const limit = toBytes("capacity_range.limit_bytes", req.capacity_range.limit_bytes);
    if (!required && !limit) throw invalidArgument("capacity_range needs required_bytes or limit_bytes");
    if (limit && required > limit) throw outOfRange("capacity_range.required_bytes exceeds limit_bytes");
    return this.d.locks.with([id], async () => {
      const v = isOurId("vol", id) ? findVolume(this.d, id) : undefined;
      if (!v) throw notFound(`volume ${id} does not exist`);
      const nodeExpansion = v.fsType !== "";
      const target = alignUp(required || limit);
      if (v.capacity >= (required || limit)) {
        if (limit && v.capacity > limit) throw outOfRange(`volume is already ${v.capacity} bytes, above limit ${limit}`);
        return { capacity_bytes: String(v.capacity), node_expansion_required: nodeExpansion };
      }
      const size = limit && target > limit ? Math.floor(limit / ALIGN) * ALIGN : target;
      if (size < required) throw outOfRange(`no aligned size between ${required} and ${limit}`);
      if (size - v.capacity > this.availableCapacity()) throw resourceExhausted("not enough space to grow the volume");
      const image = this.d.backing.imagePath(v.id);
      if (!existsSync(image)) throw failedPrecondition(`backing file of ${id} is missing`);
      this.d.backing.growImage(image, size);
      this.d.store.setVolumeCapacity(v.id, size);
      // A raw device in use sees its new size now; filesystems grow on the node (NodeExpandVolume).
      const loop = this.d.backing.loopFor(image);
      if (loop && !nodeExpansion) refreshLoopCapacity(loop.number);
      this.d.log.info({ volumeId: id, from: v.capacity, to: size }, "volume expanded");
      return { capacity_bytes: String(size), node_expansion_required: nodeExpansion };
    });
  }
}

function sortKeys(o: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
}
