// Node service: stage = loop attached (+ filesystem mounted), publish = bind mount into the
// target. Every step is recorded before it is done, and every step is idempotent.
import { randomUUID } from "node:crypto";
import { closeSync, existsSync, lstatSync, openSync, rmdirSync, statSync, unlinkSync } from "node:fs";
import { statFs } from "../native/fs.ts";
import { refreshLoopCapacity } from "../native/loop.ts";
import { bindMount, isMountPoint } from "../native/mount.ts";
import { GiB, loopSizeBytes, MiB, OnlineResizeUnavailable, unmountAll } from "./backing.ts";
import {
  type Driver,
  EPHEMERAL_KEY,
  EPHEMERAL_NAME_PREFIX,
  filesystemMountPoint,
  findVolume,
  TOPOLOGY_KEY,
  volumeCondition,
} from "./driver.ts";
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from "./errors.ts";
import { type MountOptions, parseMountFlags } from "./mount-flags.ts";
import { makeDirectories, vetNodePath } from "./paths.ts";
import type { NodeExpandVolumeRequest__Output } from "./proto/generated/csi/v1/NodeExpandVolumeRequest.ts";
import type { NodeExpandVolumeResponse } from "./proto/generated/csi/v1/NodeExpandVolumeResponse.ts";
import type { NodeGetInfoResponse } from "./proto/generated/csi/v1/NodeGetInfoResponse.ts";
import type { NodeGetVolumeStatsRequest__Output } from "./proto/generated/csi/v1/NodeGetVolumeStatsRequest.ts";
import type { NodeGetVolumeStatsResponse } from "./proto/generated/csi/v1/NodeGetVolumeStatsResponse.ts";
import type { NodePublishVolumeRequest__Output } from "./proto/generated/csi/v1/NodePublishVolumeRequest.ts";
import type { NodeStageVolumeRequest__Output } from "./proto/generated/csi/v1/NodeStageVolumeRequest.ts";
import type { NodeUnpublishVolumeRequest__Output } from "./proto/generated/csi/v1/NodeUnpublishVolumeRequest.ts";
import type { NodeUnstageVolumeRequest__Output } from "./proto/generated/csi/v1/NodeUnstageVolumeRequest.ts";
import { publicationConditionPrefix, stagingConditionPrefix } from "./reconcile.ts";
import type { PublicationRow, StagingRow, VolumeRow } from "./state.ts";
import {
  type Capability,
  checkMap,
  isOurId,
  isReadOnlyMode,
  isSinglePublisherMode,
  parseCapability,
  requireId,
  requirePath,
  requirePathField,
  volumePathMatch,
} from "./validate.ts";
import { discardVolume, isAbandonedEphemeral, materialize } from "./volumes.ts";

const EPHEMERAL_DEFAULT_SIZE = 100 * MiB;

function parseQuantity(field: string, value: string): number {
  const m = /^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(value.trim());
  if (!m) throw invalidArgument(`${field} must be a size like 100Mi or 1Gi, got ${JSON.stringify(value)}`);
  const units: Record<string, number> = { Ki: 1024, Mi: MiB, Gi: GiB, Ti: 1024 * GiB, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(m[1]) * (m[2] ? units[m[2]]! : 1);
}

function capabilityFits(v: VolumeRow, cap: Capability): string | undefined {
  if (!v.accessTypes.includes(cap.accessType)) return `volume ${v.id} was created for ${v.accessTypes.join("/")} access`;
  if (cap.accessType === "mount" && cap.fsType && cap.fsType !== v.fsType)
    return `volume ${v.id} holds ${v.fsType}, not ${cap.fsType}`;
  if (cap.accessType === "mount" && !v.fsType) return `volume ${v.id} has no filesystem`;
  return undefined;
}

export class NodeService {
  constructor(private readonly d: Driver) {}

  getInfo(): NodeGetInfoResponse {
    return {
      node_id: this.d.nodeId,
      max_volumes_per_node: String(this.d.maxVolumesPerNode),
      accessible_topology: { segments: { [TOPOLOGY_KEY]: this.d.nodeId } },
    };
  }

  async stage(req: NodeStageVolumeRequest__Output): Promise<Record<string, never>> {
    const id = requireId("volume_id", req.volume_id);
    const stagingPath = vetNodePath("staging_target_path", req.staging_target_path).path;
    const cap = parseCapability("volume_capability", req.volume_capability);
    checkMap("secrets", req.secrets);
    checkMap("volume_context", req.volume_context);
    const opts = parseMountFlags(cap.mountFlags, isReadOnlyMode(cap.mode));
    return this.d.locks.with([id], async () => {
      const v = findVolume(this.d, id);
      if (!v || v.ephemeral) throw notFound(`volume ${id} does not exist`);
      const misfit = capabilityFits(v, cap);
      if (misfit) throw failedPrecondition(misfit);
      const existing = this.d.store.staging(id);
      if (existing && (existing.stagingPath !== stagingPath || existing.accessType !== cap.accessType)) {
        throw alreadyExists(`volume ${id} is staged at ${existing.stagingPath} for ${existing.accessType} access`);
      }
      // Adopting a mount someone else made would have NodeUnstageVolume unmount it.
      if (!existing && isMountPoint(stagingPath))
        throw failedPrecondition(`staging_target_path ${stagingPath} is already a mount point this driver did not make`);
      const row: StagingRow = {
        volumeId: id,
        stagingPath,
        accessType: cap.accessType,
        mode: cap.mode,
        mountFlags: cap.mountFlags,
      };
      this.d.store.putStaging(row);
      try {
        await this.applyStaging(v, row, opts);
      } catch (e) {
        if (!existing) {
          this.undoStaging(v, row);
          this.d.store.deleteStaging(id);
        }
        throw e;
      }
      if (v.condition.includes(stagingConditionPrefix(stagingPath))) this.d.store.setVolumeCondition(v.id, "");
      this.d.log.info({ volumeId: id, stagingPath }, "volume staged");
      return {};
    });
  }

  /** Attaches and mounts what a staging row says; safe to repeat (used by the reconciler too). */
  async applyStaging(
    v: VolumeRow,
    row: StagingRow,
    opts = parseMountFlags(row.mountFlags, isReadOnlyMode(row.mode)),
  ): Promise<void> {
    const image = this.d.backing.imagePath(v.id);
    if (!existsSync(image)) throw failedPrecondition(`backing file of volume ${v.id} is missing`);
    const loop = this.d.backing.ensureAttached(image);
    if (row.accessType === "block" || !v.fsType) return;
    const mountPoint = v.kind === "dir" ? this.d.backing.dirMountPath(v.id) : row.stagingPath;
    const fresh = !isMountPoint(mountPoint);
    // The image may be bigger than its filesystem (restored or cloned to a larger size, or
    // expanded while unstaged): grow it before anyone publishes.
    const grow = fresh && !opts.readOnly;
    if (grow && v.fsType === "ext4") {
      refreshLoopCapacity(loop.number);
      if (await this.d.backing.growExt4Offline(loop)) this.d.log.info({ volumeId: v.id }, "filesystem grown to the volume size");
    }
    this.d.backing.ensureMounted(image, mountPoint, v.fsType, opts);
    if (grow && v.fsType === "xfs") await this.d.backing.growMounted(loop, v.fsType, mountPoint);
    if (v.kind === "dir") makeDirectories(this.d.backing.dirDataPath(v.id), 0o777);
  }

  private undoStaging(v: VolumeRow, row: StagingRow): void {
    const mountPoint =
      v.kind === "dir" ? this.d.backing.dirMountPath(v.id) : v.fsType && row.accessType === "mount" ? row.stagingPath : undefined;
    this.d.backing.unmountAndDetach(this.d.backing.imagePath(v.id), mountPoint);
  }

  async unstage(req: NodeUnstageVolumeRequest__Output): Promise<Record<string, never>> {
    const id = requireId("volume_id", req.volume_id);
    const stagingPath = requirePath("staging_target_path", req.staging_target_path);
    return this.d.locks.with([id], async () => {
      const v = findVolume(this.d, id);
      if (!v) throw notFound(`volume ${id} does not exist`);
      const row = this.d.store.staging(id);
      if (!row) return {};
      if (row.stagingPath !== stagingPath) throw notFound(`volume ${id} is not staged at ${stagingPath}`);
      if (this.d.store.publications(id).length > 0) throw failedPrecondition(`volume ${id} is still published`);
      this.undoStaging(v, row);
      this.d.store.deleteStaging(id);
      if (v.condition.includes(stagingConditionPrefix(stagingPath))) this.d.store.setVolumeCondition(v.id, "");
      this.d.log.info({ volumeId: id, stagingPath }, "volume unstaged");
      return {};
    });
  }

  async publish(req: NodePublishVolumeRequest__Output): Promise<Record<string, never>> {
    const id = requireId("volume_id", req.volume_id);
    const target = vetNodePath("target_path", req.target_path, { parentMustExist: true }).path;
    const cap = parseCapability("volume_capability", req.volume_capability);
    checkMap("secrets", req.secrets);
    const context = checkMap("volume_context", req.volume_context);
    const ephemeral = context[EPHEMERAL_KEY] === "true";
    const stagingPath = ephemeral ? "" : requirePath("staging_target_path", req.staging_target_path);
    const readOnly = req.readonly || isReadOnlyMode(cap.mode);
    const opts = parseMountFlags(cap.mountFlags, readOnly);
    if (ephemeral && cap.accessType !== "mount") throw invalidArgument("ephemeral volumes support only mount access");
    const size = ephemeral && context.size ? parseQuantity("volume_context.size", context.size) : EPHEMERAL_DEFAULT_SIZE;

    return this.d.locks.with([id], async () => {
      let v = findVolume(this.d, id);
      if (ephemeral && !v) v = await this.createEphemeral(id, size);
      if (!v) throw notFound(`volume ${id} does not exist`);
      const misfit = capabilityFits(v, cap);
      if (misfit) throw failedPrecondition(misfit);
      if (!v.ephemeral) {
        const staging = this.d.store.staging(v.id);
        if (!staging || staging.stagingPath !== stagingPath)
          throw failedPrecondition(`volume ${id} is not staged at ${stagingPath}`);
      }
      const row: PublicationRow = {
        volumeId: v.id,
        targetPath: target,
        accessType: cap.accessType,
        mode: cap.mode,
        readOnly,
        mountFlags: cap.mountFlags,
      };
      const existing = this.d.store.publicationAt(target);
      if (existing) {
        const same =
          existing.volumeId === v.id &&
          existing.accessType === row.accessType &&
          existing.readOnly === readOnly &&
          existing.mode === row.mode;
        if (!same) throw alreadyExists(`${target} is already published with different arguments`);
      } else {
        // Adopting a mount someone else made would have NodeUnpublishVolume unmount it.
        if (isMountPoint(target))
          throw failedPrecondition(`target_path ${target} is already a mount point this driver did not make`);
        const others = this.d.store.publications(v.id);
        if (others.length > 0 && (isSinglePublisherMode(cap.mode) || others.some((o) => isSinglePublisherMode(o.mode)))) {
          throw failedPrecondition(
            `volume ${id} is already published at ${others[0]!.targetPath} and its access mode allows one publication`,
          );
        }
      }
      this.d.store.putPublication(row);
      try {
        if (v.ephemeral)
          await this.applyStaging(v, { volumeId: v.id, stagingPath: "", accessType: "mount", mode: cap.mode, mountFlags: [] });
        this.applyPublication(v, row, stagingPath, opts);
      } catch (e) {
        if (!existing) {
          this.removeTarget(row);
          this.d.store.deletePublication(v.id, target);
          // An ephemeral volume this publish made goes with it.
          if (isAbandonedEphemeral(this.d, v)) discardVolume(this.d, v);
        }
        throw e;
      }
      if (v.condition.includes(publicationConditionPrefix(target))) this.d.store.setVolumeCondition(v.id, "");
      this.d.log.info({ volumeId: v.id, target, readOnly }, "volume published");
      return {};
    });
  }

  private async createEphemeral(coVolumeId: string, size: number): Promise<VolumeRow> {
    const v: VolumeRow = {
      id: `vol-${randomUUID()}`,
      name: EPHEMERAL_NAME_PREFIX + coVolumeId,
      kind: "dir",
      capacity: Math.max(size, 16 * MiB),
      fsType: "ext4",
      accessTypes: ["mount"],
      parameters: { kind: "dir" },
      sourceType: "",
      sourceId: "",
      ephemeral: true,
      status: "creating",
      condition: "",
      createdAt: Date.now(),
    };
    await materialize(this.d, v);
    return v;
  }

  /** Makes the target and bind-mounts the volume onto it; idempotent. */
  applyPublication(v: VolumeRow, row: PublicationRow, stagingPath: string, opts: MountOptions): void {
    if (isMountPoint(row.targetPath)) return;
    const readOnly = row.readOnly;
    if (row.accessType === "block") {
      const image = this.d.backing.imagePath(v.id);
      const loop = readOnly ? this.d.backing.ensureReadOnlyAttached(image) : this.d.backing.ensureAttached(image);
      if (!existsSync(row.targetPath)) closeSync(openSync(row.targetPath, "wx", 0o660));
      bindMount(loop.device, row.targetPath, { readOnly, flags: opts.bind });
      return;
    }
    makeDirectories(row.targetPath, 0o750);
    const source = v.kind === "dir" ? this.d.backing.dirDataPath(v.id) : stagingPath;
    if (!isMountPoint(v.kind === "dir" ? this.d.backing.dirMountPath(v.id) : stagingPath)) {
      throw failedPrecondition(`volume ${v.id} is not mounted on this node; stage it first`);
    }
    bindMount(source, row.targetPath, { readOnly, flags: opts.bind });
  }

  /** Removes what publish made at the target: the mount, then the empty dir or file. */
  private removeTarget(row: PublicationRow): void {
    unmountAll(row.targetPath);
    try {
      // lstat: a symlink now at the target was not made here and is left alone.
      const st = lstatSync(row.targetPath);
      if (st.isDirectory()) rmdirSync(row.targetPath);
      else if (st.isFile() && st.size === 0) unlinkSync(row.targetPath);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ENOTEMPTY") throw e;
    }
  }

  async unpublish(req: NodeUnpublishVolumeRequest__Output): Promise<Record<string, never>> {
    const id = requireId("volume_id", req.volume_id);
    const target = requirePath("target_path", req.target_path);
    return this.d.locks.with([id], async () => {
      const v = findVolume(this.d, id);
      if (!v) {
        // An ephemeral volume whose teardown failed after its last publication went: the
        // retry finishes it.
        const left = isOurId("vol", id) ? undefined : this.d.store.volumeByName(EPHEMERAL_NAME_PREFIX + id);
        if (left?.ephemeral && left.status === "deleting") {
          discardVolume(this.d, left);
          this.d.log.info({ volumeId: left.id, target }, "volume removed");
          return {};
        }
        throw notFound(`volume ${id} does not exist`);
      }
      const row = this.d.store.publicationAt(target);
      if (!row || row.volumeId !== v.id) return {};
      this.removeTarget(row);
      // The last publication of an ephemeral volume takes the volume with it: its row turns
      // "deleting" in the same transaction that drops the publication.
      const last = v.ephemeral && this.d.store.publications(v.id).every((p) => p.targetPath === target);
      this.d.store.transaction(() => {
        this.d.store.deletePublication(v.id, target);
        if (last) this.d.store.setVolumeStatus(v.id, "deleting");
      });
      if (last) {
        discardVolume(this.d, { ...v, status: "deleting" });
        this.d.log.info({ volumeId: v.id, target }, "volume unpublished and removed");
        return {};
      }
      if (v.condition.includes(publicationConditionPrefix(target))) this.d.store.setVolumeCondition(v.id, "");
      const readOnlyRaw = (p: PublicationRow) => p.accessType === "block" && p.readOnly;
      if (readOnlyRaw(row) && !this.d.store.publications(v.id).some(readOnlyRaw)) {
        this.d.backing.detachReadOnly(this.d.backing.imagePath(v.id));
      }
      this.d.log.info({ volumeId: v.id, target }, "volume unpublished");
      return {};
    });
  }

  private servedPath(v: VolumeRow, path: string): boolean {
    if (this.d.store.publicationAt(path)?.volumeId === v.id) return true;
    return this.d.store.staging(v.id)?.stagingPath === path;
  }

  async volumeStats(req: NodeGetVolumeStatsRequest__Output): Promise<NodeGetVolumeStatsResponse> {
    // Missing fields are INVALID_ARGUMENT; past that, the volume and whether it is at that
    // path are looked up first (NOT_FOUND), as kubelet and csi-sanity expect.
    const id = requireId("volume_id", req.volume_id);
    const raw = requirePathField("volume_path", req.volume_path);
    if (req.staging_target_path) requirePathField("staging_target_path", req.staging_target_path);
    const v = findVolume(this.d, id);
    if (!v) throw notFound(`volume ${id} does not exist`);
    const path = volumePathMatch(raw);
    if (!path || !this.servedPath(v, path)) throw notFound(`volume ${id} is not at ${raw}`);
    const condition = volumeCondition(this.d, v);
    const mountPoint = filesystemMountPoint(this.d, v);
    if (v.fsType && mountPoint && isMountPoint(mountPoint)) {
      // statfs of the volume's own filesystem, not of the host's.
      const { bytes, inodes } = statFs(mountPoint);
      return {
        usage: [
          { unit: "BYTES", total: String(bytes.total), available: String(bytes.available), used: String(bytes.used) },
          { unit: "INODES", total: String(inodes.total), available: String(inodes.available), used: String(inodes.used) },
        ],
        volume_condition: condition,
      };
    }
    const loop = this.d.backing.loopFor(this.d.backing.imagePath(v.id));
    const total = loop
      ? loopSizeBytes(loop.number)
      : existsSync(this.d.backing.imagePath(v.id))
        ? statSync(this.d.backing.imagePath(v.id)).size
        : 0;
    return { usage: [{ unit: "BYTES", total: String(total) }], volume_condition: condition };
  }

  async expand(req: NodeExpandVolumeRequest__Output): Promise<NodeExpandVolumeResponse> {
    const id = requireId("volume_id", req.volume_id);
    const raw = requirePathField("volume_path", req.volume_path);
    if (req.staging_target_path) requirePathField("staging_target_path", req.staging_target_path);
    if (req.volume_capability) parseCapability("volume_capability", req.volume_capability);
    return this.d.locks.with([id], async () => {
      // As in volumeStats: an unknown volume, or one not at volume_path, is NOT_FOUND.
      const v = findVolume(this.d, id);
      if (!v) throw notFound(`volume ${id} does not exist`);
      const path = volumePathMatch(raw);
      if (!path || !this.servedPath(v, path)) throw notFound(`volume ${id} is not at ${raw}`);
      const loop = this.d.backing.loopFor(this.d.backing.imagePath(v.id));
      if (!loop) throw failedPrecondition(`volume ${id} is not attached on this node`);
      const mountPoint = filesystemMountPoint(this.d, v);
      const staging = this.d.store.staging(v.id);
      const mounted =
        v.fsType && staging?.accessType !== "block" && mountPoint && isMountPoint(mountPoint) ? mountPoint : undefined;
      refreshLoopCapacity(loop.number);
      if (mounted) {
        try {
          await this.d.backing.growMounted(loop, v.fsType, mounted);
        } catch (e) {
          if (e instanceof OnlineResizeUnavailable) throw failedPrecondition(e.message);
          throw e;
        }
      }
      return { capacity_bytes: String(loopSizeBytes(loop.number)) };
    });
  }
}
