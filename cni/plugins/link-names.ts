// Names of the host-side links of an attachment: deterministic in service, so DEL and GC find
// them without the netns, and an alias that keeps the in-service name of a retired one.
import type { Link } from "../../native/netlink/link.ts";
import { shortHash } from "../digest.ts";

const hex = shortHash;

/**
 * Host-side link name of an attachment: `<prefix><network 4 hex><attachment 8 hex>` (14 bytes).
 * Deterministic, so DEL finds it without the netns and GC can tell a network's stale links
 * from live ones by name alone.
 */
export function hostLinkName(prefix: "bv" | "bp", network: string, containerId: string, ifname: string): string {
  return `${prefix}${networkTag(network)}${hex(`${containerId}/${ifname}`, 8)}`;
}

export function networkTag(network: string): string {
  return hex(network, 4);
}

/** Prefix of a link taken out of service, awaiting its delete in the background. */
export const RETIRED_PREFIX = "bz";

/**
 * The alias a retired host link carries: its name in service. A retired link outlives a
 * process that dies before its background delete; by this alias a later DEL of the same
 * attachment, or GC of its network, still finds it.
 */
export function retiredAlias(name: string): string {
  return `berth-retired:${name}`;
}

/** The in-service name a retired link carried, or undefined when `l` is not a retired link. */
export function retiredFrom(l: Link): string | undefined {
  if (!l.name.startsWith(RETIRED_PREFIX) || !l.alias?.startsWith("berth-retired:")) return undefined;
  return l.alias.slice("berth-retired:".length);
}
