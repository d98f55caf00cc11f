// Durable driver state in SQLite (<state-dir>/csi.db, WAL, synchronous FULL). Rows are
// written as intents before side effects (status "creating"/"deleting", staging and
// publication rows), so that after a crash the reconciler finds either the old or the new
// state and finishes or undoes the operation.
import Database from "better-sqlite3";
import type { AccessType } from "./validate.ts";

export type VolumeKind = "dir" | "block";
export type RowStatus = "creating" | "ready" | "deleting";

export interface VolumeRow {
  id: string;
  name: string;
  kind: VolumeKind;
  capacity: number;
  fsType: string; // filesystem inside the image ("" = raw block)
  accessTypes: AccessType[];
  parameters: Record<string, string>;
  sourceType: "" | "snapshot" | "volume";
  sourceId: string;
  ephemeral: boolean;
  status: RowStatus;
  condition: string; // "" = healthy; otherwise why the reconciler gave up
  createdAt: number;
}

export interface SnapshotRow {
  id: string;
  name: string;
  sourceVolumeId: string;
  size: number;
  fsType: string;
  kind: VolumeKind;
  status: RowStatus;
  createdAt: number;
  /** The group snapshot this one was cut with ("" = none); it lives and dies with the group. */
  groupSnapshotId: string;
}

export interface GroupSnapshotRow {
  id: string;
  name: string;
  /** The member volumes in the order the CO named them. */
  sourceVolumeIds: string[];
  status: RowStatus;
  createdAt: number;
}

export interface StagingRow {
  volumeId: string;
  stagingPath: string;
  accessType: AccessType;
  mode: string;
  mountFlags: string[];
}

export interface PublicationRow {
  volumeId: string;
  targetPath: string;
  accessType: AccessType;
  mode: string;
  readOnly: boolean;
  mountFlags: string[];
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS volumes (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  capacity INTEGER NOT NULL,
  fs_type TEXT NOT NULL,
  access_types TEXT NOT NULL,
  parameters TEXT NOT NULL,
  source_type TEXT NOT NULL,
  source_id TEXT NOT NULL,
  ephemeral INTEGER NOT NULL,
  status TEXT NOT NULL,
  condition TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  source_volume_id TEXT NOT NULL,
  size INTEGER NOT NULL,
  fs_type TEXT NOT NULL,
  kind TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  group_snapshot_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS group_snapshots (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  source_volume_ids TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stagings (
  volume_id TEXT PRIMARY KEY REFERENCES volumes(id),
  staging_path TEXT NOT NULL,
  access_type TEXT NOT NULL,
  mode TEXT NOT NULL,
  mount_flags TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS publications (
  volume_id TEXT NOT NULL REFERENCES volumes(id),
  target_path TEXT NOT NULL UNIQUE,
  access_type TEXT NOT NULL,
  mode TEXT NOT NULL,
  read_only INTEGER NOT NULL,
  mount_flags TEXT NOT NULL,
  PRIMARY KEY (volume_id, target_path)
);
`;

interface RawVolume {
  id: string;
  name: string;
  kind: string;
  capacity: number;
  fs_type: string;
  access_types: string;
  parameters: string;
  source_type: string;
  source_id: string;
  ephemeral: number;
  status: string;
  condition: string;
  created_at: number;
}

function toVolume(r: RawVolume): VolumeRow {
  return {
    id: r.id,
    name: r.name,
    kind: r.kind as VolumeKind,
    capacity: r.capacity,
    fsType: r.fs_type,
    accessTypes: JSON.parse(r.access_types) as AccessType[],
    parameters: JSON.parse(r.parameters) as Record<string, string>,
    sourceType: r.source_type as VolumeRow["sourceType"],
    sourceId: r.source_id,
    ephemeral: r.ephemeral === 1,
    status: r.status as RowStatus,
    condition: r.condition,
    createdAt: r.created_at,
  };
}

interface RawSnapshot {
  id: string;
  name: string;
  source_volume_id: string;
  size: number;
  fs_type: string;
  kind: string;
  status: string;
  created_at: number;
  group_snapshot_id: string;
}

function toSnapshot(r: RawSnapshot): SnapshotRow {
  return {
    id: r.id,
    name: r.name,
    sourceVolumeId: r.source_volume_id,
    size: r.size,
    fsType: r.fs_type,
    kind: r.kind as VolumeKind,
    status: r.status as RowStatus,
    createdAt: r.created_at,
    groupSnapshotId: r.group_snapshot_id,
  };
}

interface RawGroupSnapshot {
  id: string;
  name: string;
  source_volume_ids: string;
  status: string;
  created_at: number;
}

function toGroupSnapshot(r: RawGroupSnapshot): GroupSnapshotRow {
  return {
    id: r.id,
    name: r.name,
    sourceVolumeIds: JSON.parse(r.source_volume_ids) as string[],
    status: r.status as RowStatus,
    createdAt: r.created_at,
  };
}

interface RawPublication {
  volume_id: string;
  target_path: string;
  access_type: string;
  mode: string;
  read_only: number;
  mount_flags: string;
}

function toPublication(r: RawPublication): PublicationRow {
  return {
    volumeId: r.volume_id,
    targetPath: r.target_path,
    accessType: r.access_type as AccessType,
    mode: r.mode,
    readOnly: r.read_only === 1,
    mountFlags: JSON.parse(r.mount_flags) as string[],
  };
}

interface RawStaging {
  volume_id: string;
  staging_path: string;
  access_type: string;
  mode: string;
  mount_flags: string;
}

function toStaging(r: RawStaging): StagingRow {
  return {
    volumeId: r.volume_id,
    stagingPath: r.staging_path,
    accessType: r.access_type as AccessType,
    mode: r.mode,
    mountFlags: JSON.parse(r.mount_flags) as string[],
  };
}

export class VolumeStore {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = FULL");
    this.db.pragma("foreign_keys = ON");
    this.db.exec(SCHEMA);
    // Databases made before group snapshots lack the column.
    const columns = this.db.prepare("PRAGMA table_info(snapshots)").all() as { name: string }[];
    if (!columns.some((c) => c.name === "group_snapshot_id")) {
      this.db.exec("ALTER TABLE snapshots ADD COLUMN group_snapshot_id TEXT NOT NULL DEFAULT ''");
    }
  }

  close(): void {
    this.db.close();
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  // ---- volumes ----

  volume(id: string): VolumeRow | undefined {
    const r = this.db.prepare("SELECT * FROM volumes WHERE id = ?").get(id) as RawVolume | undefined;
    return r && toVolume(r);
  }

  volumeByName(name: string): VolumeRow | undefined {
    const r = this.db.prepare("SELECT * FROM volumes WHERE name = ?").get(name) as RawVolume | undefined;
    return r && toVolume(r);
  }

  /** Volumes ordered by id, starting after `afterId`. */
  volumes(afterId = "", limit = -1): VolumeRow[] {
    const rows = this.db.prepare("SELECT * FROM volumes WHERE id > ? ORDER BY id LIMIT ?").all(afterId, limit) as RawVolume[];
    return rows.map(toVolume);
  }

  insertVolume(v: VolumeRow): void {
    this.db
      .prepare(
        `INSERT INTO volumes (id, name, kind, capacity, fs_type, access_types, parameters, source_type, source_id,
          ephemeral, status, condition, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        v.id,
        v.name,
        v.kind,
        v.capacity,
        v.fsType,
        JSON.stringify(v.accessTypes),
        JSON.stringify(v.parameters),
        v.sourceType,
        v.sourceId,
        v.ephemeral ? 1 : 0,
        v.status,
        v.condition,
        v.createdAt,
      );
  }

  setVolumeStatus(id: string, status: RowStatus): void {
    this.db.prepare("UPDATE volumes SET status = ? WHERE id = ?").run(status, id);
  }

  setVolumeCapacity(id: string, capacity: number): void {
    this.db.prepare("UPDATE volumes SET capacity = ? WHERE id = ?").run(capacity, id);
  }

  setVolumeCondition(id: string, condition: string): void {
    this.db.prepare("UPDATE volumes SET condition = ? WHERE id = ?").run(condition, id);
  }

  deleteVolume(id: string): void {
    this.transaction(() => {
      this.db.prepare("DELETE FROM publications WHERE volume_id = ?").run(id);
      this.db.prepare("DELETE FROM stagings WHERE volume_id = ?").run(id);
      this.db.prepare("DELETE FROM volumes WHERE id = ?").run(id);
    });
  }

  // ---- snapshots ----

  snapshot(id: string): SnapshotRow | undefined {
    const r = this.db.prepare("SELECT * FROM snapshots WHERE id = ?").get(id) as RawSnapshot | undefined;
    return r && toSnapshot(r);
  }

  snapshotByName(name: string): SnapshotRow | undefined {
    const r = this.db.prepare("SELECT * FROM snapshots WHERE name = ?").get(name) as RawSnapshot | undefined;
    return r && toSnapshot(r);
  }

  snapshots(filter: { sourceVolumeId?: string; snapshotId?: string }, afterId = "", limit = -1): SnapshotRow[] {
    const rows = this.db
      .prepare(
        `SELECT * FROM snapshots WHERE id > ? AND status = 'ready'
          AND (? = '' OR source_volume_id = ?) AND (? = '' OR id = ?) ORDER BY id LIMIT ?`,
      )
      .all(
        afterId,
        filter.sourceVolumeId ?? "",
        filter.sourceVolumeId ?? "",
        filter.snapshotId ?? "",
        filter.snapshotId ?? "",
        limit,
      ) as RawSnapshot[];
    return rows.map(toSnapshot);
  }

  allSnapshots(): SnapshotRow[] {
    return (this.db.prepare("SELECT * FROM snapshots ORDER BY id").all() as RawSnapshot[]).map(toSnapshot);
  }

  insertSnapshot(s: SnapshotRow): void {
    this.db
      .prepare(
        `INSERT INTO snapshots (id, name, source_volume_id, size, fs_type, kind, status, created_at, group_snapshot_id)
          VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(s.id, s.name, s.sourceVolumeId, s.size, s.fsType, s.kind, s.status, s.createdAt, s.groupSnapshotId);
  }

  setSnapshotStatus(id: string, status: RowStatus): void {
    this.db.prepare("UPDATE snapshots SET status = ? WHERE id = ?").run(status, id);
  }

  deleteSnapshot(id: string): void {
    this.db.prepare("DELETE FROM snapshots WHERE id = ?").run(id);
  }

  // ---- group snapshots: the group row and its member snapshot rows change together ----

  groupSnapshot(id: string): GroupSnapshotRow | undefined {
    const r = this.db.prepare("SELECT * FROM group_snapshots WHERE id = ?").get(id) as RawGroupSnapshot | undefined;
    return r && toGroupSnapshot(r);
  }

  groupSnapshotByName(name: string): GroupSnapshotRow | undefined {
    const r = this.db.prepare("SELECT * FROM group_snapshots WHERE name = ?").get(name) as RawGroupSnapshot | undefined;
    return r && toGroupSnapshot(r);
  }

  allGroupSnapshots(): GroupSnapshotRow[] {
    return (this.db.prepare("SELECT * FROM group_snapshots ORDER BY id").all() as RawGroupSnapshot[]).map(toGroupSnapshot);
  }

  /** The member snapshots of a group, in the group's volume order. */
  groupMembers(groupId: string): SnapshotRow[] {
    const g = this.groupSnapshot(groupId);
    const rows = (this.db.prepare("SELECT * FROM snapshots WHERE group_snapshot_id = ?").all(groupId) as RawSnapshot[]).map(
      toSnapshot,
    );
    const order = g?.sourceVolumeIds ?? [];
    return rows.sort((a, b) => order.indexOf(a.sourceVolumeId) - order.indexOf(b.sourceVolumeId));
  }

  /** The intent: the group and its members, all "creating", in one transaction. */
  insertGroupSnapshot(g: GroupSnapshotRow, members: SnapshotRow[]): void {
    this.transaction(() => {
      this.db
        .prepare("INSERT INTO group_snapshots (id, name, source_volume_ids, status, created_at) VALUES (?, ?, ?, ?, ?)")
        .run(g.id, g.name, JSON.stringify(g.sourceVolumeIds), g.status, g.createdAt);
      for (const m of members) this.insertSnapshot(m);
    });
  }

  setGroupSnapshotStatus(id: string, status: RowStatus): void {
    this.transaction(() => {
      this.db.prepare("UPDATE group_snapshots SET status = ? WHERE id = ?").run(status, id);
      this.db.prepare("UPDATE snapshots SET status = ? WHERE group_snapshot_id = ?").run(status, id);
    });
  }

  deleteGroupSnapshot(id: string): void {
    this.transaction(() => {
      this.db.prepare("DELETE FROM snapshots WHERE group_snapshot_id = ?").run(id);
      this.db.prepare("DELETE FROM group_snapshots WHERE id = ?").run(id);
    });
  }

  // ---- node state ----

  staging(volumeId: string): StagingRow | undefined {
    const r = this.db.prepare("SELECT * FROM stagings WHERE volume_id = ?").get(volumeId) as RawStaging | undefined;
    return r && toStaging(r);
  }

  stagings(): StagingRow[] {
    return (this.db.prepare("SELECT * FROM stagings").all() as RawStaging[]).map(toStaging);
  }

  putStaging(s: StagingRow): void {
    this.db
      .prepare(`INSERT OR REPLACE INTO stagings (volume_id, staging_path, access_type, mode, mount_flags) VALUES (?, ?, ?, ?, ?)`)
      .run(s.volumeId, s.stagingPath, s.accessType, s.mode, JSON.stringify(s.mountFlags));
  }

  deleteStaging(volumeId: string): void {
    this.db.prepare("DELETE FROM stagings WHERE volume_id = ?").run(volumeId);
  }

  publications(volumeId?: string): PublicationRow[] {
    const rows = (
      volumeId === undefined
        ? this.db.prepare("SELECT * FROM publications").all()
        : this.db.prepare("SELECT * FROM publications WHERE volume_id = ?").all(volumeId)
    ) as RawPublication[];
    return rows.map(toPublication);
  }

  publicationAt(targetPath: string): PublicationRow | undefined {
    const r = this.db.prepare("SELECT * FROM publications WHERE target_path = ?").get(targetPath) as RawPublication | undefined;
    return r && toPublication(r);
  }

  putPublication(p: PublicationRow): void {
    this.db
      .prepare(
        `INSERT OR REPLACE INTO publications (volume_id, target_path, access_type, mode, read_only, mount_flags)
          VALUES (?, ?, ?, ?, ?, ?)`,
      )
      .run(p.volumeId, p.targetPath, p.accessType, p.mode, p.readOnly ? 1 : 0, JSON.stringify(p.mountFlags));
  }

  deletePublication(volumeId: string, targetPath: string): void {
    this.db.prepare("DELETE FROM publications WHERE volume_id = ? AND target_path = ?").run(volumeId, targetPath);
  }
}
