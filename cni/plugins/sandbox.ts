// The container side of an attachment: addresses, routes and link state inside CNI_NETNS,
// plus the checks CHECK runs against what the kernel holds there.

import type { Link } from "../../native/netlink/link.ts";
import type { Rtnl } from "../../native/netlink/socket.ts";
import { familyOf, normalizeCidr } from "../address/address.ts";
import { CniError, ErrorCode, type IpConfig, type Result, type Route } from "../protocol/types.ts";

export interface SandboxOptions {
  /** Skip IPv6 duplicate address detection (berth's default: DAD costs ~2 s per ADD). */
  nodad: boolean;
  /** Install no connected route for the addresses (ptp routes through the gateway instead). */
  noprefixroute?: boolean;
  /** Leave the interface down (bridge's disableContainerInterface). */
  down?: boolean;
}

/** The container interface as the result reports it. */
export interface SandboxLink {
  index: number;
  mac?: string;
  mtu?: number;
}

/**
 * Adds addresses, brings the link up and installs the routes, in that order, as one netlink
 * batch (one round trip; on the thread pool unless its socket says inline, so a busy
 * agent's thread goes on serving while concurrent ADDs hold the kernel's rtnl lock). The link
 * is `known` (just created) or read first; it is returned for the result: its MAC and MTU.
 */
export async function configureSandbox(
  nl: Rtnl,
  ifname: string,
  ips: IpConfig[],
  routes: Route[],
  opts: SandboxOptions,
  known?: SandboxLink,
): Promise<SandboxLink> {
  const link = known ?? nl.linkGet(ifname);
  if (!link) throw new CniError(ErrorCode.Internal, `interface ${ifname} vanished before it was configured`);
  const dev = link.index;
  const batch = nl.batch();
  for (const ip of ips) {
    const v6 = familyOf(ip.address) === 6;
    batch.addrAdd(dev, {
      cidr: ip.address,
      nodad: v6 && opts.nodad,
      noprefixroute: opts.noprefixroute,
      broadcast: v6 ? undefined : "auto",
    });
  }
  if (!opts.down) batch.linkSet(dev, { up: true });
  for (const r of routes) {
    // As the reference plugins do: a route without a gateway goes via the address's gateway
    // of the same family; explicit link-scope routes stay on-link.
    const gw = r.gw ?? (r.scope === 253 ? undefined : ips.find((i) => familyOf(i.address) === familyOf(r.dst))?.gateway);
    batch.routeAdd(
      {
        dst: r.dst === "0.0.0.0/0" || r.dst === "::/0" ? "default" : r.dst,
        family: familyOf(r.dst),
        gateway: gw,
        dev,
        priority: r.priority,
        table: r.table,
        mtu: r.mtu,
        advmss: r.advmss,
        scope: r.scope,
      },
      // The same route from two range sets (e.g. a shared default) is fine once.
      { ignore: ["EEXIST"] },
    );
  }
  await batch.runAsync();
  return link;
}

/** CHECK of the container side: the interface, its MAC, addresses and routes are all there. */
export function checkSandbox(nl: Rtnl, ifname: string, prev: Result, sandboxPath: string): Link {
  const link = nl.linkGet(ifname);
  if (!link) throw new CniError(ErrorCode.Internal, `CHECK: interface ${ifname} is missing in ${sandboxPath}`);
  const mine = (prev.interfaces ?? []).findIndex((i) => i.name === ifname && i.sandbox);
  // The plugin's ADD always reports the container interface: a prevResult without it is not
  // the result of that ADD, and there is nothing in it to check against.
  if (mine < 0) {
    throw new CniError(ErrorCode.InvalidConfig, `CHECK: prevResult lists no interface ${ifname} in a sandbox`);
  }
  const expectedMac = prev.interfaces![mine]!.mac;
  if (expectedMac && link.mac?.toLowerCase() !== expectedMac.toLowerCase()) {
    throw new CniError(ErrorCode.Internal, `CHECK: ${ifname} has MAC ${link.mac}, the ADD result says ${expectedMac}`);
  }
  const have = new Set(nl.addrList({ ifindex: link.index }).map((a) => a.cidr));
  for (const ip of prev.ips ?? []) {
    if (ip.interface !== undefined && ip.interface !== mine) continue;
    if (!have.has(normalizeCidr(ip.address))) {
      throw new CniError(ErrorCode.Internal, `CHECK: address ${ip.address} is missing on ${ifname} in ${sandboxPath}`);
    }
  }
  const routes = nl.routeList({ ifindex: link.index });
  for (const r of prev.routes ?? []) {
    const dst = r.dst === "0.0.0.0/0" || r.dst === "::/0" ? "default" : normalizeCidr(r.dst);
    const found = routes.some((k) => (k.dst === dst || normalizeCidr(k.dst) === dst) && (!r.gw || k.gateway === r.gw));
    if (!found)
      throw new CniError(ErrorCode.Internal, `CHECK: route ${r.dst}${r.gw ? ` via ${r.gw}` : ""} is missing in ${sandboxPath}`);
  }
  return link;
}
