// Network configurations for the plugin under test, using the reference plugins' option names
// (bridge: `bridge`; macvlan: `master`; host-local: `ranges`, `dataDir`, `routes`; static:
// `addresses`), so the same config drives the reference and any compatible implementation.
import type { Sandbox } from "../../testing/sandbox.ts";

export interface PluginTarget {
  /** Directory with the executables (CNI_PATH). */
  cniPath: string;
  /** Main plugin executable name, e.g. "bridge" or "berth-bridge". */
  type: string;
  /** IPAM plugin executable name, e.g. "host-local" or "berth-host-local". */
  ipam: string;
}

export interface NetworkShape {
  name: string;
  /** "10.X.N" — the first three octets of the network's /24. */
  base: string;
  subnet: string;
  /** Last octets of the allocatable range; a small range makes exhaustion observable. */
  rangeStart?: number;
  rangeEnd?: number;
}

/** True when the IPAM type is a pool allocator configured like host-local. */
export function ipamIsPool(ipam: string): boolean {
  return !/static$/.test(ipam);
}

export function ipamConfig(target: PluginTarget, sandbox: Sandbox, net: NetworkShape): Record<string, unknown> {
  const routes = [{ dst: "0.0.0.0/0" }];
  if (!ipamIsPool(target.ipam)) {
    return { type: target.ipam, addresses: [{ address: `${net.base}.10/24`, gateway: `${net.base}.1` }], routes };
  }
  const range: Record<string, string> = { subnet: net.subnet, gateway: `${net.base}.1` };
  if (net.rangeStart !== undefined) range.rangeStart = `${net.base}.${net.rangeStart}`;
  if (net.rangeEnd !== undefined) range.rangeEnd = `${net.base}.${net.rangeEnd}`;
  return { type: target.ipam, dataDir: sandbox.dataDir, ranges: [[range]], routes };
}

/** The main plugin's own options, by plugin family (recognised by the executable's name). */
function pluginOptions(target: PluginTarget, sandbox: Sandbox): Record<string, unknown> {
  if (/bridge$/.test(target.type)) return { bridge: sandbox.bridgeName, isGateway: false };
  if (/(macvlan|ipvlan)$/.test(target.type)) return { master: sandbox.macvlanMaster() };
  return {};
}

/** A complete single-plugin network configuration in `cniVersion`. */
export function networkConfig(
  target: PluginTarget,
  sandbox: Sandbox,
  net: NetworkShape,
  cniVersion: string,
): Record<string, unknown> {
  return {
    cniVersion,
    name: net.name,
    type: target.type,
    ...pluginOptions(target, sandbox),
    ipam: ipamConfig(target, sandbox, net),
  };
}
