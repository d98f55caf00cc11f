// Start-up repair: finish or undo operations a crash interrupted, and bring back what a
// reboot took away (loop devices, staging mounts, publications) from the recorded state.
// Nothing here may keep the driver from serving: every row is repaired on its own, a row that
// fails is logged and reported, and a staging or publication row that cannot be restored marks
// its volume abnormal (VolumeCondition) instead. Paths from rows are vetted like the RPC's own
// before anything touches them, so every synchronous step is a bounded syscall; the
// asynchronous ones (filesystem checks and growth) have a deadline.
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { thawFilesystem } from "../native/fs.ts";
import { isMountPoint } from "../native/mount.ts";
import { type Driver, filesystemMountPoint } from "./driver.ts";
import { parseMountFlags } from "./mount-flags.ts";
import type { NodeService } from "./node.ts";
import { vetNodePath } from "./paths.ts";
import type { VolumeRow } from "./state.ts";
import { isOurId } from "./validate.ts";
import { discardVolume, isAbandonedEphemeral } from "./volumes.ts";

export interface ReconcileReport {
  removed: string[];
  repaired: string[];
  abnormal: string[];
}

export interface ReconcileOptions {
  /** How long one row's repair may take before its volume is reported abnormal. */
  rowTimeoutMs?: number;
}

export const ROW_TIMEOUT_MS = 60_000;

/** The condition text for a staging row that could not be restored (unstage clears it by this). */
export function stagingConditionPrefix(path: string): string {
  return `could not restore staging at ${path}:`;
}

/** The condition text for a publication row that could not be restored. */
export function publicationConditionPrefix(path: string): string {
  return `could not restore publication at ${path}:`;
}

class DeadlineExceeded extends Error {
  override name = "DeadlineExceeded";
}

/**
 * Runs `fn` and waits for it at most `ms`. When the deadline passes first the work goes on in
 * the background (it cannot be cancelled); `onSettled` runs whenever it ends, with whether it
 * succeeded, so a caller can hold a lock until then and take back what it reported.
 */
async function withDeadline<T>(fn: () => Promise<T>, ms: number, onSettled: (ok: boolean) => void): Promise<T> {
  const work = Promise.resolve().then(fn);
  work.then(
    () => onSettled(true),
    () => onSettled(false),
  );
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineExceeded(`repair did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export async function reconcile(
  d: Driver,
  node: NodeService | undefined,
  options: ReconcileOptions = {},
): Promise<ReconcileReport> {
  const rowTimeoutMs = options.rowTimeoutMs ?? ROW_TIMEOUT_MS;
  const report: ReconcileReport = { removed: [], repaired: [], abnormal: [] };
  /** Runs one row's repair; a failure is logged and reported, never thrown. */
  const attempt = (what: string, fn: () => void): boolean => {
    try {
      fn();
      return true;
    } catch (e) {
      d.log.warn({ err: message(e) }, `start-up repair: ${what} failed`);
      report.abnormal.push(`${what}: ${message(e)}`);
      return false;
    }
  };
  /** Rows of one table; an unreadable table is reported and skipped. */
  const rows = <T>(what: string, list: () => T[]): T[] => {
    let out: T[] = [];
    attempt(`reading ${what}`, () => {
      out = list();
    });
    return out;
  };

  // 0. A snapshot or clone cut midway may have left its sources' filesystems frozen (the freeze
  // outlives the process): thaw them before anything else touches those volumes.
  const interrupted = new Set<string>();
  for (const g of rows("group snapshots", () => d.store.allGroupSnapshots()))
    if (g.status === "creating") for (const id of g.sourceVolumeIds) interrupted.add(id);
  for (const s of rows("snapshots", () => d.store.allSnapshots())) if (s.status === "creating") interrupted.add(s.sourceVolumeId);
  for (const v of rows("volumes", () => d.store.volumes()))
    if (v.status === "creating" && v.sourceType === "volume") interrupted.add(v.sourceId); // a clone freezes its source
  for (const id of interrupted) {
    try {
      const v = d.store.volume(id);
      const mountPoint = v && filesystemMountPoint(d, v);
      if (mountPoint && isMountPoint(mountPoint) && (await thawFilesystem(mountPoint)))
        report.repaired.push(`thawed ${mountPoint}`);
    } catch (e) {
      d.log.warn({ err: message(e) }, `start-up repair: thawing the filesystem of ${id} failed`);
      report.abnormal.push(`${id}: thawing its filesystem: ${message(e)}`);
    }
  }
  // 1. Half-made or half-deleted rows, and ephemeral volumes left without a publication (their
  // publish or unpublish was cut short): their mounts, loops and files go, then the rows.
  for (const v of rows("volumes", () => d.store.volumes())) {
    if (v.status === "ready" && !isAbandonedEphemeral(d, v)) continue;
    const what = v.status === "ready" ? "ephemeral volume left without a publication" : "half-made volume";
    attempt(`removing ${what} ${v.id}`, () => {
      discardVolume(d, v);
      report.removed.push(v.id);
    });
  }
  // A group snapshot cut or deleted midway goes with its members (one transaction).
  for (const g of rows("group snapshots", () => d.store.allGroupSnapshots())) {
    if (g.status === "ready") continue;
    attempt(`removing half-made group snapshot ${g.id}`, () => {
      for (const m of d.store.groupMembers(g.id)) d.backing.removeFile(d.backing.snapshotPath(m.id));
      d.store.deleteGroupSnapshot(g.id);
      report.removed.push(g.id);
    });
  }
  for (const s of rows("snapshots", () => d.store.allSnapshots())) {
    if (s.status === "ready") continue;
    attempt(`removing half-made snapshot ${s.id}`, () => {
      d.backing.removeFile(d.backing.snapshotPath(s.id));
      d.store.deleteSnapshot(s.id);
      report.removed.push(s.id);
    });
  }
  // 2. Files with our names but no row (crash between file and row): remove.
  for (const [dir, kind] of [
    [d.backing.imageDir, "vol"],
    [d.backing.snapshotDir, "snap"],
  ] as const) {
    for (const f of rows(dir, () => readdirSync(dir))) {
      const m = /^(.*)\.img(\.tmp)?$/.exec(f);
      if (!m?.[1] || !isOurId(kind, m[1])) continue;
      attempt(`removing orphan file ${f}`, () => {
        const known = kind === "vol" ? d.store.volume(m[1]!) : d.store.snapshot(m[1]!);
        if (!known || m[2]) {
          d.backing.removeFile(join(dir, f));
          report.removed.push(f);
        }
      });
    }
  }
  if (!node) return report;

  // 3 and 4: each staging and publication row is restored under its volume's lock, with a
  // deadline; what fails becomes the volume's condition.
  const conditions = new Map<string, string[]>();
  let conditionsWritten = false;
  const writeCondition = (v: VolumeRow) => {
    const condition = (conditions.get(v.id) ?? []).join("; ");
    if (condition !== v.condition)
      attempt(`recording the condition of ${v.id}`, () => d.store.setVolumeCondition(v.id, condition));
  };
  const restore = async (v: VolumeRow, label: string, prefix: string, fn: () => Promise<boolean>): Promise<void> => {
    let late: string | undefined;
    try {
      // The lock goes when the work ends: a repair past its deadline keeps it, and RPCs on the
      // volume get ABORTED until then. If it then succeeds, its condition is taken back.
      const release = d.locks.acquire([v.id]);
      const settled = (ok: boolean) => {
        release();
        if (!ok || late === undefined) return;
        const why = late;
        conditions.set(
          v.id,
          (conditions.get(v.id) ?? []).filter((c) => c !== why),
        );
        d.log.info({ volumeId: v.id }, "a repair that missed its deadline has finished");
        if (conditionsWritten) {
          const rest = (conditions.get(v.id) ?? []).join("; ");
          attempt(`clearing the condition of ${v.id}`, () => d.store.setVolumeCondition(v.id, rest));
        }
      };
      if (await withDeadline(fn, rowTimeoutMs, settled)) report.repaired.push(label);
    } catch (e) {
      const why = `${prefix} ${message(e)}`;
      if (e instanceof DeadlineExceeded) late = why;
      d.log.warn({ volumeId: v.id, err: why }, "volume marked abnormal");
      report.abnormal.push(`${v.id}: ${why}`);
      conditions.set(v.id, [...(conditions.get(v.id) ?? []), why]);
    }
  };
  const volumeOf = (id: string): VolumeRow | undefined => {
    let v: VolumeRow | undefined;
    attempt(`reading volume ${id}`, () => {
      v = d.store.volume(id);
    });
    return v?.status === "ready" ? v : undefined;
  };

  // 3. Staged volumes: loop attached, filesystem mounted.
  for (const row of rows("stagings", () => d.store.stagings())) {
    const v = volumeOf(row.volumeId);
    if (!v) continue;
    await restore(v, `staging ${v.id}`, stagingConditionPrefix(row.stagingPath), async () => {
      vetNodePath("staging path", row.stagingPath);
      const mountPoint = v.kind === "dir" ? d.backing.dirMountPath(v.id) : row.stagingPath;
      const needed =
        !d.backing.loopFor(d.backing.imagePath(v.id)) || (!!v.fsType && row.accessType === "mount" && !isMountPoint(mountPoint));
      await node.applyStaging(v, row);
      return needed;
    });
  }
  // 4. Publications: bind mounts back at their targets.
  for (const p of rows("publications", () => d.store.publications())) {
    const v = volumeOf(p.volumeId);
    if (!v) continue;
    await restore(v, `publication ${p.targetPath}`, publicationConditionPrefix(p.targetPath), async () => {
      vetNodePath("target path", p.targetPath);
      if (isMountPoint(p.targetPath)) return false;
      if (v.ephemeral)
        await node.applyStaging(v, { volumeId: v.id, stagingPath: "", accessType: "mount", mode: p.mode, mountFlags: [] });
      const staging = d.store.staging(v.id);
      node.applyPublication(v, p, staging?.stagingPath ?? "", parseMountFlags(p.mountFlags, p.readOnly));
      return true;
    });
  }
  // Every node-side condition is recomputed: a row restored this time clears an old one.
  for (const v of rows("volumes", () => d.store.volumes())) if (v.status === "ready") writeCondition(v);
  conditionsWritten = true;
  return report;
}
