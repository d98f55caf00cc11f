// GroupController service (spec 1.12): snapshots of several volumes of this node as of one
// point in time. The mounted filesystems of all members are frozen together, every backing
// image is copied (reflink or sparse copy), then all are thawed; a group's member snapshots
// are ordinary snapshots (usable as a CreateVolume content source) that live and die with it.
import { randomUUID } from "node:crypto";
import { closeSync, fsyncSync, openSync } from "node:fs";
import { FsError } from "../native/fs.ts";
import { isMountPoint } from "../native/mount.ts";
import { type ControllerService, timestamp } from "./controller.ts";
import { type Driver, filesystemMountPoint, findVolume } from "./driver.ts";
import { aborted, alreadyExists, failedPrecondition, invalidArgument, notFound, resourceExhausted } from "./errors.ts";
import type { CreateVolumeGroupSnapshotRequest__Output } from "./proto/generated/csi/v1/CreateVolumeGroupSnapshotRequest.ts";
import type { CreateVolumeGroupSnapshotResponse } from "./proto/generated/csi/v1/CreateVolumeGroupSnapshotResponse.ts";
import type { DeleteVolumeGroupSnapshotRequest__Output } from "./proto/generated/csi/v1/DeleteVolumeGroupSnapshotRequest.ts";
import type { GetVolumeGroupSnapshotRequest__Output } from "./proto/generated/csi/v1/GetVolumeGroupSnapshotRequest.ts";
import type { GetVolumeGroupSnapshotResponse } from "./proto/generated/csi/v1/GetVolumeGroupSnapshotResponse.ts";
import type { VolumeGroupSnapshot } from "./proto/generated/csi/v1/VolumeGroupSnapshot.ts";
import type { GroupSnapshotRow, SnapshotRow, VolumeRow } from "./state.ts";
import { checkMap, isOurId, requireId, requireName } from "./validate.ts";

// Member snapshot names: a control character can never be in a CO's snapshot name
// (requireName refuses it), so these never collide with CreateSnapshot's names.
const MEMBER_NAME_PREFIX = "\u0001group/";
const GROUP_ID = /^group-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const CO_PARAMETER_PREFIX = "csi.storage.k8s.io/";

function sameSet(a: string[], b: string[]): boolean {
  const x = new Set(a);
  return x.size === new Set(b).size && b.every((id) => x.has(id));
}

function requireIdList(field: string, ids: string[] | undefined): string[] {
  const list = (ids ?? []).map((id, i) => requireId(`${field}[${i}]`, id));
  if (new Set(list).size !== list.length) throw invalidArgument(`${field} names a volume twice`);
  return list;
}

export class GroupControllerService {
  constructor(
    private readonly d: Driver,
    private readonly controller: ControllerService,
  ) {}

  private message(g: GroupSnapshotRow, members: SnapshotRow[]): VolumeGroupSnapshot {
    return {
      group_snapshot_id: g.id,
      snapshots: members.map((m) => this.controller.snapshotMessage(m)),
      creation_time: timestamp(g.createdAt),
      ready_to_use: g.status === "ready",
    };
  }

  /** A ready group, or undefined (unknown ids and half-made groups alike). */
  private find(id: string): GroupSnapshotRow | undefined {
    const g = GROUP_ID.test(id) ? this.d.store.groupSnapshot(id) : undefined;
    return g?.status === "ready" ? g : undefined;
  }

  /** Removes a group's files and rows (a half-made group, or one being deleted). */
  private discard(g: GroupSnapshotRow): void {
    this.d.store.setGroupSnapshotStatus(g.id, "deleting");
    for (const m of this.d.store.groupMembers(g.id)) this.d.backing.removeFile(this.d.backing.snapshotPath(m.id));
    this.d.store.deleteGroupSnapshot(g.id);
  }

  /**
   * What must be paused while the member images are copied: the mount point of each member's
   * filesystem when it is mounted. A raw block volume that is attached read-write has no
   * filesystem to freeze: its writes cannot be paused, so the group cannot be consistent.
   */
  private quiescePlan(volumes: VolumeRow[]): string[] {
    const mounts: string[] = [];
    for (const v of volumes) {
      const mp = filesystemMountPoint(this.d, v);
      if (mp && isMountPoint(mp)) {
        mounts.push(mp);
        continue;
      }
      const loop = this.d.backing.loopFor(this.d.backing.imagePath(v.id));
      if (!loop) continue; // not in use: nothing writes to it
      if (this.d.store.staging(v.id) || this.d.store.publications(v.id).length > 0) {
        throw failedPrecondition(
          `volume ${v.id} is in use as a raw block device: its writes cannot be paused, so a group snapshot would not be consistent`,
        );
      }
      // Attached but unused: flush the device so the copy sees every completed write.
      const fd = openSync(loop.device, "r");
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
    return mounts;
  }

  async create(req: CreateVolumeGroupSnapshotRequest__Output): Promise<CreateVolumeGroupSnapshotResponse> {
    const name = requireName("name", req.name);
    const sourceIds = requireIdList("source_volume_ids", req.source_volume_ids);
    if (sourceIds.length === 0) throw invalidArgument("source_volume_ids is required");
    checkMap("secrets", req.secrets);
    checkMap("parameters", req.parameters);
    if (Object.keys(req.parameters ?? {}).some((k) => !k.startsWith(CO_PARAMETER_PREFIX))) {
      throw invalidArgument("CreateVolumeGroupSnapshot takes no parameters");
    }
    return this.d.locks.with([`group-snapshot-name:${name}`, ...sourceIds], async () => {
      const existing = this.d.store.groupSnapshotByName(name);
      if (existing?.status === "ready") {
        if (!sameSet(existing.sourceVolumeIds, sourceIds)) {
          throw alreadyExists(
            `group snapshot named ${JSON.stringify(name)} exists for volumes ${existing.sourceVolumeIds.join(", ")}`,
          );
        }
        return { group_snapshot: this.message(existing, this.d.store.groupMembers(existing.id)) };
      }
      if (existing) this.discard(existing); // a create or delete that crashed midway

      const volumes = sourceIds.map((id) => {
        const v = isOurId("vol", id) ? findVolume(this.d, id) : undefined;
        if (!v || v.ephemeral) throw notFound(`volume ${id} does not exist`);
        return v;
      });
      const needed = volumes.reduce((n, v) => n + this.d.backing.allocatedBytes(this.d.backing.imagePath(v.id)), 0);
      if (needed > this.controller.availableCapacity()) {
        throw resourceExhausted(`not enough space in ${this.d.backing.dataDir} for a group snapshot of ${needed} bytes`);
      }
      const frozen = this.quiescePlan(volumes);

      const now = Date.now();
      const g: GroupSnapshotRow = {
        id: `group-${randomUUID()}`,
        name,
        sourceVolumeIds: sourceIds,
        status: "creating",
        createdAt: now,
      };
      const members: SnapshotRow[] = volumes.map((v) => ({
        id: `snap-${randomUUID()}`,
        name: `${MEMBER_NAME_PREFIX}${g.id}/${v.id}`,
        sourceVolumeId: v.id,
        size: v.capacity,
        fsType: v.fsType,
        kind: v.kind,
        status: "creating",
        createdAt: now,
        groupSnapshotId: g.id,
      }));
      this.d.store.insertGroupSnapshot(g, members);
      try {
        const methods = await this.d.backing.copyImagesTogether(
          members.map((m) => ({ src: this.d.backing.imagePath(m.sourceVolumeId), dst: this.d.backing.snapshotPath(m.id) })),
          frozen,
        );
        this.d.store.setGroupSnapshotStatus(g.id, "ready");
        g.status = "ready";
        for (const m of members) m.status = "ready";
        this.d.log.info({ groupSnapshotId: g.id, volumes: sourceIds, frozen: frozen.length, methods }, "group snapshot cut");
      } catch (e) {
        for (const m of members) this.d.backing.removeFile(this.d.backing.snapshotPath(m.id));
        this.d.store.deleteGroupSnapshot(g.id);
        // Someone else holds a member's filesystem frozen: a retry later may succeed.
        if (e instanceof FsError && e.code === "EBUSY") throw aborted(`cannot freeze ${e.path}: it is already frozen`);
        throw e;
      }
      return { group_snapshot: this.message(g, members) };
    });
  }

  async delete(req: DeleteVolumeGroupSnapshotRequest__Output): Promise<Record<string, never>> {
    const id = requireId("group_snapshot_id", req.group_snapshot_id);
    const snapshotIds = requireIdList("snapshot_ids", req.snapshot_ids);
    checkMap("secrets", req.secrets);
    if (!GROUP_ID.test(id)) return {};
    return this.d.locks.with([id], async () => {
      const g = this.d.store.groupSnapshot(id);
      if (!g) return {};
      const members = this.d.store.groupMembers(id);
      // Members are held too: a CreateVolume restoring from one of them gets ABORTED meanwhile.
      const release = this.d.locks.acquire(members.map((m) => m.id));
      try {
        this.deleteLocked(g, members, snapshotIds);
      } finally {
        release();
      }
      return {};
    });
  }

  private deleteLocked(g: GroupSnapshotRow, members: SnapshotRow[], snapshotIds: string[]): void {
    if (g.status === "ready") {
      // The list is the CO's statement of what it deletes: it must be exactly the group.
      if (snapshotIds.length === 0) throw invalidArgument("snapshot_ids is required");
      if (
        !sameSet(
          members.map((m) => m.id),
          snapshotIds,
        )
      ) {
        throw invalidArgument(
          `snapshot_ids do not match the members of group snapshot ${g.id} (${members.map((m) => m.id).join(", ")})`,
        );
      }
    }
    this.discard(g);
    this.d.log.info({ groupSnapshotId: g.id }, "group snapshot deleted");
  }

  async get(req: GetVolumeGroupSnapshotRequest__Output): Promise<GetVolumeGroupSnapshotResponse> {
    const id = requireId("group_snapshot_id", req.group_snapshot_id);
    const snapshotIds = requireIdList("snapshot_ids", req.snapshot_ids);
    checkMap("secrets", req.secrets);
    const g = this.find(id);
    if (!g) throw notFound(`group snapshot ${id} does not exist`);
    const members = this.d.store.groupMembers(id);
    if (
      snapshotIds.length > 0 &&
      !sameSet(
        members.map((m) => m.id),
        snapshotIds,
      )
    ) {
      throw invalidArgument(`snapshot_ids do not match the members of group snapshot ${id}`);
    }
    return { group_snapshot: this.message(g, members) };
  }
}
