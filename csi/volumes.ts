// A volume's lifecycle, shared by the controller (CreateVolume, DeleteVolume), the node
// (ephemeral inline volumes, made by NodePublishVolume and gone with their last
// NodeUnpublishVolume) and start-up repair. Every step is recorded before it is done, so a
// crash anywhere leaves a row start-up repair finishes: "creating" or "deleting" rows go.
import type { Driver } from "./driver.ts";
import type { VolumeRow } from "./state.ts";

/**
 * Removes a volume: its status "deleting" is committed first, then its mounts, loop devices
 * and image go, then its row (with any staging and publication rows). Idempotent, so start-up
 * repair can run it again on a row a crash left "deleting".
 */
export function discardVolume(d: Driver, v: VolumeRow): void {
  if (v.status !== "deleting") {
    d.store.setVolumeStatus(v.id, "deleting");
    v.status = "deleting";
  }
  const image = d.backing.imagePath(v.id);
  d.backing.unmountAndDetach(image, v.kind === "dir" ? d.backing.dirMountPath(v.id) : undefined);
  d.backing.removeFile(image);
  d.store.deleteVolume(v.id);
}

/** An ephemeral inline volume with no publication left: its unpublish or publish was cut short. */
export function isAbandonedEphemeral(d: Driver, v: VolumeRow): boolean {
  return v.ephemeral && v.status === "ready" && d.store.publications(v.id).length === 0;
}

/**
 * Makes a volume: its row is written "creating" first, then its image (empty, or a copy of
 * `sourceImage`, grown to the volume's size), then the row turns "ready". A failure undoes it all.
 */
export async function materialize(d: Driver, v: VolumeRow, sourceImage = "", frozenMount?: string): Promise<void> {
  d.store.insertVolume(v);
  const image = d.backing.imagePath(v.id);
  try {
    if (sourceImage) {
      const method = await d.backing.copyImage(sourceImage, image, frozenMount);
      d.backing.growImage(image, v.capacity);
      d.log.info({ volumeId: v.id, source: v.sourceId, method }, "volume populated from source");
    } else {
      await d.backing.createImage(image, v.capacity, v.fsType);
    }
    d.store.setVolumeStatus(v.id, "ready");
    v.status = "ready";
  } catch (e) {
    discardVolume(d, v);
    throw e;
  }
}
