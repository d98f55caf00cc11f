// The underlay: which interface and address carry VXLAN traffic, and its MTU. Read from the
// calling thread's network namespace (netlink, and /proc/net for the default route), so an
// agent started inside a namespace sees that namespace's links.

import { readFileSync } from "node:fs";
import { type Family, ipFamily } from "../cni/address/address.ts";
import type { Scope } from "../native/netlink/address.ts";
import { Rtnl } from "../native/netlink/socket.ts";
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
  const nl = Rtnl.open();
  try {
    const link = nl.linkGet(iface);
    if (!link) throw new UnderlayError(`underlay interface "${iface}" does not exist`);
    return link.mtu;
  } finally {
    nl.close();
  }
}

interface IfaceAddress {
  address: string;
  scope: Scope | number;
}

/**
 * Every address of this netns by interface name, read over netlink. Not os.networkInterfaces():
 * libuv leaves out interfaces without carrier (not RUNNING), so an agent started the moment its
 * link came up — before the carrier settled — saw an underlay without an address.
 */
function addressesByInterface(): Map<string, IfaceAddress[]> {
  const nl = Rtnl.open();
  try {
    const names = new Map(nl.linkList().map((l) => [l.index, l.name]));
    const out = new Map<string, IfaceAddress[]>();
    for (const a of nl.addrList()) {
      const name = names.get(a.ifindex);
      if (!name) continue;
      const list = out.get(name) ?? [];
      list.push({ address: a.address, scope: a.scope });
      out.set(name, list);
    }
    return out;
  } finally {
    nl.close();
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
  const all = addressesByInterface();
  if (options.publicIP) {
    const family = ipFamily(options.publicIP)!;
    const holder = [...all].find(([, addrs]) => addrs.some((a) => sameIp(a.address, options.publicIP!)));
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
  // Global addresses only: not loopback (host scope), not IPv6 link-local.
  const addrs = (all.get(iface) ?? []).filter((a) => a.scope === "universe" || a.scope === "site");
  const pick = addrs.find((a) => ipFamily(a.address) === 4) ?? addrs[0];
  if (!pick) throw new UnderlayError(`underlay interface "${iface}" has no usable address: pass --public-ip`);
  return { iface, publicIP: pick.address, family: ipFamily(pick.address)!, mtu };
}
