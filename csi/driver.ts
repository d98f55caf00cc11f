// What every service shares: state, back ends, locks, identity of this node; plus the
// questions all of them ask about a volume (which filesystem mount, is it healthy).
import { existsSync } from "node:fs";
import type { Logger } from "pino";
import { isMountPoint } from "../native/mount.ts";
import type { BackingStore, Enforcement } from "./backing.ts";
import type { InFlight } from "./locks.ts";
import type { VolumeRow, VolumeStore } from "./state.ts";
import { isOurId } from "./validate.ts";

export const TOPOLOGY_KEY = "topology.berth/node";
export const EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral";
/** Ephemeral inline volumes are named by the CO's volume id; the row's id is still ours. */
export const EPHEMERAL_NAME_PREFIX = "ephemeral/";

export interface Driver {
  store: VolumeStore;
  backing: BackingStore;
  locks: InFlight;
  nodeId: string;
  driverName: string;
  log: Logger;
  enforcement: Enforcement;
  maxVolumesPerNode: number;
}

export function findVolume(d: Driver, volumeId: string): VolumeRow | undefined {
  const v = isOurId("vol", volumeId) ? d.store.volume(volumeId) : d.store.volumeByName(EPHEMERAL_NAME_PREFIX + volumeId);
  return v && v.status === "ready" ? v : undefined;
}

/** Where the volume's filesystem is mounted on this node when staged (undefined for raw block). */
export function filesystemMountPoint(d: Driver, v: VolumeRow): string | undefined {
  if (!v.fsType) return undefined;
  if (v.kind === "dir") return d.backing.dirMountPath(v.id);
  return d.store.staging(v.id)?.stagingPath;
}

export interface Condition {
  abnormal: boolean;
  message: string;
}

/** Checks what the kernel holds against what the state says should be there. */
export function volumeCondition(d: Driver, v: VolumeRow): Condition {
  const image = d.backing.imagePath(v.id);
  if (!existsSync(image)) return { abnormal: true, message: `backing file ${image} is missing` };
  // Why the start-up repair gave up says more than what is missing as a result.
  if (v.condition) return { abnormal: true, message: v.condition };
  const staging = d.store.staging(v.id);
  const publications = d.store.publications(v.id);
  if (staging || publications.length > 0) {
    if (!d.backing.loopFor(image)) return { abnormal: true, message: "the volume's loop device is detached" };
    const mountPoint = filesystemMountPoint(d, v);
    if (mountPoint && !isMountPoint(mountPoint)) return { abnormal: true, message: `filesystem is not mounted at ${mountPoint}` };
  }
  for (const p of publications) {
    if (!isMountPoint(p.targetPath)) return { abnormal: true, message: `publication at ${p.targetPath} is not mounted` };
  }
  return { abnormal: false, message: "volume is healthy" };
}

export function volumeContext(v: VolumeRow): Record<string, string> {
  const ctx: Record<string, string> = { "berth.csi/kind": v.kind };
  if (v.fsType) ctx["berth.csi/fs-type"] = v.fsType;
  return ctx;
}
