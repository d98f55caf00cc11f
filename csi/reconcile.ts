// Start-up repair: finish or undo operations a crash interrupted, and bring back what a
// reboot took away (loop devices, staging mounts, publications) from the recorded state.
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { isMountPoint } from "../native/mount.ts";
import type { Driver } from "./driver.ts";
import { parseMountFlags } from "./mount-flags.ts";
import type { NodeService } from "./node.ts";
import { isOurId } from "./validate.ts";

export interface ReconcileReport {
  removed: string[];
  repaired: string[];
  abnormal: string[];
}

export async function reconcile(d: Driver, node: NodeService | undefined): Promise<ReconcileReport> {
  const report: ReconcileReport = { removed: [], repaired: [], abnormal: [] };
  // 1. Half-made or half-deleted rows: their files go, then the rows.
  for (const v of d.store.volumes()) {
    if (v.status === "ready") continue;
    d.backing.unmountAndDetach(d.backing.imagePath(v.id), v.kind === "dir" ? d.backing.dirMountPath(v.id) : undefined);
    d.backing.removeFile(d.backing.imagePath(v.id));
    d.store.deleteVolume(v.id);
    report.removed.push(v.id);
  }
  for (const s of d.store.allSnapshots()) {
    if (s.status === "ready") continue;
    d.backing.removeFile(d.backing.snapshotPath(s.id));
    d.store.deleteSnapshot(s.id);
    report.removed.push(s.id);
  }
  // 2. Files with our names but no row (crash between file and row): remove.
  for (const [dir, kind] of [
    [d.backing.imageDir, "vol"],
    [d.backing.snapshotDir, "snap"],
  ] as const) {
    for (const f of readdirSync(dir)) {
      const m = /^(.*)\.img(\.tmp)?$/.exec(f);
      if (!m?.[1] || !isOurId(kind, m[1])) continue;
      const known = kind === "vol" ? d.store.volume(m[1]) : d.store.snapshot(m[1]);
      if (!known || m[2]) {
        d.backing.removeFile(join(dir, f));
        report.removed.push(f);
      }
    }
  }
  if (!node) return report;
  // 3. Staged volumes: loop attached, filesystem mounted.
  for (const row of d.store.stagings()) {
    const v = d.store.volume(row.volumeId);
    if (!v) continue;
    try {
      const mountPoint = v.kind === "dir" ? d.backing.dirMountPath(v.id) : row.stagingPath;
      const needed =
        !d.backing.loopFor(d.backing.imagePath(v.id)) || (v.fsType && row.accessType === "mount" && !isMountPoint(mountPoint));
      await node.applyStaging(v, row);
      if (needed) report.repaired.push(`staging ${v.id}`);
      d.store.setVolumeCondition(v.id, "");
    } catch (e) {
      const msg = `could not restore staging at ${row.stagingPath}: ${(e as Error).message}`;
      d.store.setVolumeCondition(v.id, msg);
      report.abnormal.push(`${v.id}: ${msg}`);
    }
  }
  // 4. Publications: bind mounts back where the target still exists.
  for (const p of d.store.publications()) {
    const v = d.store.volume(p.volumeId);
    if (!v) continue;
    if (isMountPoint(p.targetPath)) continue;
    try {
      if (v.ephemeral)
        await node.applyStaging(v, { volumeId: v.id, stagingPath: "", accessType: "mount", mode: p.mode, mountFlags: [] });
      const staging = d.store.staging(v.id);
      node.applyPublication(v, p, staging?.stagingPath ?? "", parseMountFlags(p.mountFlags, p.readOnly));
      report.repaired.push(`publication ${p.targetPath}`);
    } catch (e) {
      const msg = `could not restore publication at ${p.targetPath}: ${(e as Error).message}`;
      d.store.setVolumeCondition(v.id, msg);
      report.abnormal.push(`${v.id}: ${msg}`);
    }
  }
  return report;
}
