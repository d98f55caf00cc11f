// Network namespaces: open by path, create/delete named ones, and a synchronous window
// that runs a callback inside a namespace and always returns to the original one.
import { basename } from "node:path";
import { addon, isSysError } from "./addon.ts";

export const NETNS_DIR = "/run/netns";

/** Thrown when a path does not name a usable network namespace. */
export class NetnsError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly path: string,
  ) {
    super(message);
    this.name = "NetnsError";
  }
}

let home: number | undefined;
/** fd of the namespace this process started in (opened once). */
function homeFd(): number {
  if (home === undefined) home = addon().netnsCurrent();
  return home;
}

/** An open handle on a network namespace. Close it when done. */
export class Netns {
  private constructor(
    readonly fd: number,
    readonly path: string,
  ) {}

  /** Opens `/run/netns/x`, `/proc/PID/ns/net` or a bare name under /run/netns. */
  static open(pathOrName: string): Netns {
    const path = pathOrName.includes("/") ? pathOrName : `${NETNS_DIR}/${pathOrName}`;
    try {
      return new Netns(addon().netnsOpen(path), path);
    } catch (e) {
      if (isSysError(e, "ENOENT")) throw new NetnsError(`network namespace ${path} does not exist`, "ENOENT", path);
      if (isSysError(e, "EINVAL")) throw new NetnsError(`${path} is not a network namespace`, "EINVAL", path);
      if (isSysError(e)) throw new NetnsError(`cannot open network namespace ${path}: ${e.message}`, e.code, path);
      throw e;
    }
  }

  /** The namespace this process started in. */
  static home(): Netns {
    return new Netns(homeFd(), "/proc/self/ns/net");
  }

  /**
   * Runs `fn` with the calling thread inside this namespace and returns to the home
   * namespace afterwards, even when `fn` throws. `fn` must be synchronous: sockets and
   * /proc/sys files opened inside stay bound to this namespace.
   */
  enter<T>(fn: () => T): T {
    const a = addon();
    // Resolve home before leaving it: looked up inside the window, "home" would be the target.
    const back = homeFd();
    a.setns(this.fd);
    let result: T;
    try {
      result = fn();
    } finally {
      a.setns(back);
    }
    if (result && typeof (result as { then?: unknown }).then === "function") {
      throw new Error("Netns.enter: the callback must be synchronous (it returned a promise)");
    }
    return result;
  }

  close(): void {
    if (this.fd !== home) addon().close(this.fd);
  }
}

/** Creates a named network namespace at /run/netns/<name> (like `ip netns add`). */
export function createNetns(name: string, dir = NETNS_DIR): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name) || name.length > 200) {
    throw new NetnsError(`invalid network namespace name "${name}"`, "EINVAL", `${dir}/${name}`);
  }
  try {
    return addon().netnsCreate(dir, name);
  } catch (e) {
    if (isSysError(e, "EEXIST")) throw new NetnsError(`network namespace ${name} already exists`, "EEXIST", `${dir}/${name}`);
    throw e;
  }
}

/** Deletes a named network namespace. Returns false when it did not exist. */
export function deleteNetns(nameOrPath: string, dir = NETNS_DIR): boolean {
  const path = nameOrPath.includes("/") ? nameOrPath : `${dir}/${basename(nameOrPath)}`;
  try {
    addon().netnsDelete(path);
    return true;
  } catch (e) {
    if (isSysError(e, "ENOENT")) return false;
    throw e;
  }
}
