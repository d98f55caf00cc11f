// The data dir (where volumes' filesystems are mounted) as a shared mount, as kubelet makes its
// root dir: on a private mount tree, a mount namespace created by any other program keeps its
// own copy of every volume mount, so an unmounted volume stays mounted there and its loop
// device stays busy until that program exits. With the data dir shared, mounts and unmounts
// under it reach the peer and slave copies in those namespaces.
import { realpathSync } from "node:fs";
import { bindMount, readMountInfo, setPropagation, unmount } from "../native/mount.ts";

export interface SharedDataDir {
  /** The data dir was bound onto itself by this call (it was not a mount point). */
  bound: boolean;
  /** Why nothing was done, when nothing was. */
  skipped?: string;
}

function mountsBelow(dir: string): boolean {
  return readMountInfo().some((m) => m.mountPoint.startsWith(`${dir}/`));
}

/**
 * Makes `dir` an rshared mount: bound onto itself first when it is not a mount point. Safe to
 * repeat. A dir that is not a mount point but already has mounts below it (left by a driver
 * that did not do this) is left alone: binding it would hide those mounts under the new one.
 */
export function shareDataDir(dir: string): SharedDataDir {
  const real = realpathSync(dir);
  const isMount = readMountInfo().some((m) => m.mountPoint === real);
  let bound = false;
  if (!isMount) {
    if (mountsBelow(real))
      return {
        bound,
        skipped: `${real} is not a mount point and volumes are mounted below it; it is made shared at a start without them`,
      };
    bindMount(real, real);
    bound = true;
  }
  try {
    setPropagation(real, "shared", { recursive: true });
  } catch (e) {
    if (bound) unmount(real, { detach: true });
    throw e;
  }
  return { bound };
}

/**
 * Undoes the bind shareDataDir made, when nothing is mounted below the data dir any more;
 * with volumes still mounted the shared mount stays (they live on it). True when unmounted.
 */
export function releaseDataDir(dir: string): boolean {
  const real = realpathSync(dir);
  if (mountsBelow(real)) return false;
  return unmount(real);
}
