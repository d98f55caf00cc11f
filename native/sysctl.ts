// Kernel parameters under /proc/sys, read and written inside any network namespace.
// /proc/sys/net shows the netns of the thread that *opens* the file, so the open happens
// inside a synchronous Netns.enter() window; the descriptor is closed before leaving it.
import { readFileSync, writeFileSync } from "node:fs";
import { Netns } from "./netns.ts";

/**
 * "net.ipv4.ip_forward", "net/ipv6/conf/eth0.100/accept_ra" (slashes: for names that
 * contain dots, as sysctl(8) accepts), or the path segments ["net","ipv6","conf","eth0.100","accept_ra"].
 */
export type SysctlKey = string | readonly string[];

export class SysctlError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly key: string,
  ) {
    super(message);
    this.name = "SysctlError";
  }
}

function segmentsOf(key: SysctlKey): readonly string[] {
  if (typeof key !== "string") return key;
  return key.includes("/") ? key.split("/") : key.split(".");
}

/** /proc/sys/... path for a key; rejects empty, "." and ".." segments (no escaping /proc/sys). */
export function sysctlPath(key: SysctlKey): string {
  const segs = segmentsOf(key);
  const shown = typeof key === "string" ? key : key.join("/");
  if (segs.length === 0) throw new SysctlError("empty sysctl key", "EINVAL", shown);
  for (const s of segs) {
    if (!s || s === "." || s === ".." || s.includes("/") || s.includes("\0")) {
      throw new SysctlError(`invalid sysctl key "${shown}"`, "EINVAL", shown);
    }
  }
  return `/proc/sys/${segs.join("/")}`;
}

function inNetns<T>(netns: Netns | string | undefined, fn: () => T): T {
  if (netns === undefined) return fn();
  // Pins the home namespace before the first window: Netns.enter resolves "home" lazily,
  // and resolving it inside the window would make the target the home for good.
  Netns.home();
  if (typeof netns !== "string") return netns.enter(fn);
  const ns = Netns.open(netns);
  try {
    return ns.enter(fn);
  } finally {
    ns.close();
  }
}

function translate(e: unknown, verb: string, key: SysctlKey, path: string): unknown {
  const code = (e as { code?: string })?.code;
  const shown = typeof key === "string" ? key : key.join("/");
  if (code === "ENOENT") return new SysctlError(`sysctl ${shown} does not exist (${path})`, code, shown);
  if (code === "EINVAL") return new SysctlError(`cannot ${verb} sysctl ${shown}: invalid value`, code, shown);
  if (typeof code === "string") return new SysctlError(`cannot ${verb} sysctl ${shown}: ${(e as Error).message}`, code, shown);
  return e;
}

/** The value with its trailing newline removed (multi-value keys keep their tabs). */
export function readSysctl(key: SysctlKey, netns?: Netns | string): string {
  const path = sysctlPath(key);
  try {
    return inNetns(netns, () => readFileSync(path, "utf8")).replace(/\n$/, "");
  } catch (e) {
    throw translate(e, "read", key, path);
  }
}

export function writeSysctl(key: SysctlKey, value: string | number, netns?: Netns | string): void {
  const path = sysctlPath(key);
  try {
    // "r+" opens O_WRONLY-ish without O_CREAT/O_TRUNC, which /proc files do not need.
    inNetns(netns, () => writeFileSync(path, String(value), { flag: "r+" }));
  } catch (e) {
    throw translate(e, "write", key, path);
  }
}
