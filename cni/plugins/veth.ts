// The veth pair of a bridge or ptp attachment: its creation (run alongside the ADD's IPAM,
// undone when the ADD fails) and its removal on DEL.
import { isNetlinkError } from "../../native/netlink/error.ts";
import type { Link } from "../../native/netlink/link.ts";
import { Rtnl } from "../../native/netlink/socket.ts";
import type { Netns } from "../../native/netns.ts";
import { CniError, ErrorCode, type Request } from "../protocol/types.ts";

import { kernelError } from "./errors.ts";
import { deleteLinkIfPresent, deleteRetiredLinks, retireLinkIfPresent, takeOutOfService } from "./link-removal.ts";
import { randomMac } from "./mac.ts";
import type { Undo } from "./undo.ts";

export interface VethOptions {
  mtu?: number;
  /** The container end's MAC (CNI_ARGS MAC / runtimeConfig.mac); else a random one of ours. */
  mac?: string;
  /** Enslave the host end at creation (bridge): no separate round trip, and atomic with it. */
  master?: number;
  /** Bring the host end up at creation. */
  up?: boolean;
}

/**
 * The attachment's veth pair: `host` in the host netns, the request's ifname created directly
 * in the container's netns, in one RTM_NEWLINK. Both MACs are chosen here, not left random to
 * the kernel: udev's MACAddressPolicy rewrites random MACs behind our back. The
 * caller has made sure the container interface does not exist (a repeated ADD must fail before
 * IPAM); a stale host end (a DEL that never ran) is then found by the EEXIST it causes,
 * removed, and the creation retried. The new pair's removal goes onto the ADD's undo stack.
 * The kernel's part runs on the thread pool (see whileCreating). Returns both ends' index and
 * MAC (the container end's from the kernel's echo, when it sends one).
 */
export async function createVethPair(
  hostNl: Rtnl,
  req: Request,
  ns: Netns,
  host: string,
  link: VethOptions,
  undo: Undo,
): Promise<VethPair> {
  const mac = randomMac();
  const podMac = link.mac ?? randomMac();
  const spec = {
    kind: "veth" as const,
    name: host,
    mtu: link.mtu,
    mac,
    master: link.master,
    up: link.up,
    peer: { name: req.ifname, netns: ns, mtu: link.mtu, mac: podMac },
  };
  let created: Link | undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      created = await hostNl.linkAddAsync(spec);
      break;
    } catch (e) {
      if (!isNetlinkError(e, "EEXIST")) throw kernelError(`create veth ${host}/${req.ifname}`, e);
      if (attempt > 1 || !hostNl.linkGet(host)) {
        throw new CniError(ErrorCode.InvalidConfig, `interface ${req.ifname} already exists in ${req.netns}`);
      }
      await deleteLinkIfPresent(hostNl, host);
    }
  }
  undo.push(() => deleteLinkIfPresent(hostNl, host));
  const index = created?.index ?? hostNl.linkIndex(host);
  // The echo's IFLA_LINK is the container end's index there: no lookup in the container.
  const podIndex = created?.linkNetnsId !== undefined ? created.parentIndex : undefined;
  const pod = podIndex === undefined ? undefined : { index: podIndex, mac: podMac, mtu: link.mtu ?? VETH_DEFAULT_MTU };
  return { index, mac, pod };
}

/** What the kernel gives a veth without IFLA_MTU (ether_setup's ETH_DATA_LEN). */
const VETH_DEFAULT_MTU = 1500;

export interface VethPair {
  /** The host end. */
  index: number;
  mac: string;
  /** The container end, as created, when the kernel's echo named it (kernels since 6.1). */
  pod?: { index: number; mac: string; mtu: number };
}

/**
 * Runs `work` (the ADD's IPAM) on this thread while `creating` (a createVethPair already under
 * way on the thread pool) goes on, and returns both. If either fails, the other is waited for
 * first, so that whatever it made is on the undo stack before the ADD unwinds.
 */
export async function whileCreating<A, B>(creating: Promise<A>, work: () => Promise<B>): Promise<[A, B]> {
  creating.catch(() => {}); // awaited below; must not count as unhandled meanwhile
  let done: B;
  try {
    done = await work();
  } catch (e) {
    await creating.catch(() => {});
    throw e;
  }
  return [await creating, done];
}

/**
 * Addresses the container interface holds (for DEL's rule cleanup): what the ADD configured,
 * read back from the kernel. prevResult is not taken for it: a wrong one would leave this
 * attachment's rules behind, or remove another attachment's.
 */
async function interfaceAddresses(req: Request, podNl: Rtnl): Promise<string[]> {
  const link = await podNl.linkGetAsync(req.ifname);
  if (!link) return [];
  return (await podNl.addrListAsync({ ifindex: link.index })).filter((a) => a.scope !== "link").map((a) => a.cidr);
}

/**
 * DEL of a veth attachment: reads the addresses its container interface holds (for rule
 * cleanup; [] when it is gone, and callers then find the rules by the attachment's tag), then
 * removes the pair through its host end (retired in the background when a resident process
 * allows it); when the host end is already gone, deletes the container end directly.
 */
export async function removePair(req: Request, ns: Netns | null, hostNl: Rtnl, host: string): Promise<string[]> {
  let addresses: string[] = [];
  const podNl = ns ? Rtnl.open(ns, req.host) : null;
  try {
    if (podNl) addresses = await interfaceAddresses(req, podNl);
    const removed = await retireLinkIfPresent(hostNl, host, req.host.linkRetirer);
    // Not there by its name: it may have been retired by a process that died before deleting it.
    if (!removed) await deleteRetiredLinks(hostNl, (was) => was === host);
    if (podNl) {
      if (!removed) await deleteLinkIfPresent(podNl, req.ifname);
      else {
        // Retired, not yet deleted: free the container's interface name for a new ADD now.
        const pod = await podNl.linkGetAsync(req.ifname);
        if (pod) {
          try {
            await takeOutOfService(podNl, pod.index);
          } catch (e) {
            // The background delete won the race: the name is free either way.
            if (!isNetlinkError(e, "ENODEV")) throw e;
          }
        }
      }
    }
  } finally {
    podNl?.close();
  }
  return addresses;
}
