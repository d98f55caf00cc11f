// The underlay: which interface and address carry VXLAN traffic, and its MTU. Read from the
// calling process's network namespace (/proc/net and /sys/class/net are per netns under
// `ip netns exec`), so an agent started inside a namespace sees that namespace's links.
import { readFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { type Family, ipFamily } from "./cidr.ts";
import { sameIp } from "./lease.ts";

export interface Underlay {
  iface: string;
  publicIP: string;
  family: Family;
  mtu: number;
}

export class UnderlayError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnderlayError";
  }
}

/** VXLAN encapsulation overhead: outer IP + UDP + VXLAN + inner Ethernet (flannel#1781 for IPv6). */
export function vxlanOverhead(family: Family): number {
  return family === 4 ? 50 : 70;
}

function readMtu(iface: string): number {
  try {
    return Number(readFileSync(`/sys/class/net/${iface}/mtu`, "utf8").trim());
  } catch {
    throw new UnderlayError(`underlay interface "${iface}" does not exist`);
  }
}

/** The interface of the IPv4 default route (lowest metric), else the IPv6 one. */
export function defaultRouteInterface(): string | null {
  try {
    let best: { iface: string; metric: number } | null = null;
    for (const line of readFileSync("/proc/net/route", "utf8").split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 8 || f[1] !== "00000000" || f[7] !== "00000000") continue;
      const metric = Number(f[6]);
      if (!best || metric < best.metric) best = { iface: f[0]!, metric };
    }
    if (best) return best.iface;
    for (const line of readFileSync("/proc/net/ipv6_route", "utf8").split("\n")) {
      const f = line.trim().split(/\s+/);
      if (f.length >= 10 && /^0{32}$/.test(f[0]!) && f[1] === "00" && f[9] !== "lo") return f[9]!;
    }
  } catch {
    // no procfs: no default
  }
  return null;
}

/**
 * Resolves the underlay from --underlay-iface and/or --public-ip: the interface holding the
 * public IP, or the interface's first global address (IPv4 preferred), or the default route's.
 */
export function discoverUnderlay(options: { iface?: string; publicIP?: string }): Underlay {
  const all = networkInterfaces();
  if (options.publicIP) {
    const family = ipFamily(options.publicIP)!;
    const holder = Object.entries(all).find(([, addrs]) => addrs?.some((a) => sameIp(a.address, options.publicIP!)));
    const iface = options.iface ?? holder?.[0];
    if (!iface) throw new UnderlayError(`no interface holds ${options.publicIP}; pass --underlay-iface as well`);
    if (options.iface && holder && holder[0] !== options.iface) {
      throw new UnderlayError(`${options.publicIP} is on ${holder[0]}, not on --underlay-iface ${options.iface}`);
    }
    return { iface, publicIP: options.publicIP, family, mtu: readMtu(iface) };
  }
  const iface = options.iface ?? defaultRouteInterface();
  if (!iface) throw new UnderlayError("no default route to pick the underlay from: pass --underlay-iface or --public-ip");
  const mtu = readMtu(iface);
  const addrs = (all[iface] ?? []).filter(
    (a) => !a.internal && !(a.family === "IPv6" && a.address.toLowerCase().startsWith("fe80")),
  );
  const pick = addrs.find((a) => a.family === "IPv4") ?? addrs[0];
  if (!pick) throw new UnderlayError(`underlay interface "${iface}" has no usable address (is it up?): pass --public-ip`);
  return { iface, publicIP: pick.address, family: ipFamily(pick.address)!, mtu };
}
