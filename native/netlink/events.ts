// Kernel change notifications (rtnetlink multicast groups) in any network namespace:
// a separate socket bound to the groups, read on the event loop via uv_poll.
import { addon, isSysError } from "../addon.ts";
import { Netns } from "../netns.ts";
import { type Addr, decodeAddr } from "./address.ts";
import { forEachMessage, type MessageView } from "./codec.ts";
import {
  AF_BRIDGE,
  NETLINK_ROUTE,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELNEIGH,
  RTM_DELROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
  RTNLGRP_IPV4_IFADDR,
  RTNLGRP_IPV4_ROUTE,
  RTNLGRP_IPV6_IFADDR,
  RTNLGRP_IPV6_ROUTE,
  RTNLGRP_LINK,
  RTNLGRP_NEIGH,
} from "./constants.ts";
import { NetlinkError } from "./error.ts";
import { decodeLink, type Link } from "./link.ts";
import { decodeFdb, decodeNeigh, type FdbEntry, type Neigh } from "./neigh.ts";
import { decodeRoute, type Route } from "./route.ts";

export type EventGroup = "link" | "ipv4-addr" | "ipv6-addr" | "ipv4-route" | "ipv6-route" | "neigh";

const GROUPS: Record<EventGroup, number> = {
  link: RTNLGRP_LINK,
  "ipv4-addr": RTNLGRP_IPV4_IFADDR,
  "ipv6-addr": RTNLGRP_IPV6_IFADDR,
  "ipv4-route": RTNLGRP_IPV4_ROUTE,
  "ipv6-route": RTNLGRP_IPV6_ROUTE,
  neigh: RTNLGRP_NEIGH,
};

export type RtnlEvent =
  | { type: "newlink" | "dellink"; link: Link }
  | { type: "newaddr" | "deladdr"; addr: Addr }
  | { type: "newroute" | "delroute"; route: Route }
  /** The neigh group carries ARP/NDP entries (`neigh`) and bridge/VXLAN FDB entries (`fdb`). */
  | { type: "newneigh" | "delneigh"; neigh?: Neigh; fdb?: FdbEntry };

export interface EventSubscription {
  close(): void;
}

function decodeEvent(m: MessageView): RtnlEvent | undefined {
  switch (m.type) {
    case RTM_NEWLINK:
    case RTM_DELLINK:
      return { type: m.type === RTM_NEWLINK ? "newlink" : "dellink", link: decodeLink(m) };
    case RTM_NEWADDR:
    case RTM_DELADDR: {
      const addr = decodeAddr(m);
      return addr && { type: m.type === RTM_NEWADDR ? "newaddr" : "deladdr", addr };
    }
    case RTM_NEWROUTE:
    case RTM_DELROUTE: {
      const route = decodeRoute(m);
      return route && { type: m.type === RTM_NEWROUTE ? "newroute" : "delroute", route };
    }
    case RTM_NEWNEIGH:
    case RTM_DELNEIGH: {
      const type = m.type === RTM_NEWNEIGH ? "newneigh" : "delneigh";
      if (m.buf[m.payload] === AF_BRIDGE) {
        const fdb = decodeFdb(m);
        return fdb && { type, fdb };
      }
      const neigh = decodeNeigh(m);
      return neigh && { type, neigh };
    }
    default:
      return undefined;
  }
}

/**
 * Calls `onEvent` for every change in `groups` inside `netns` (default: the current one).
 * When the kernel drops events because the socket buffer overflowed (ENOBUFS), `onOverflow`
 * runs so that the caller can re-list the state it tracks. Events are delivered on the
 * event loop; an exception thrown by `onEvent` surfaces as an uncaught exception.
 */
export function subscribeEvents(
  netns: Netns | string | undefined,
  groups: readonly EventGroup[],
  onEvent: (ev: RtnlEvent) => void,
  onOverflow?: () => void,
): EventSubscription {
  let mask = 0;
  for (const g of groups) {
    const n = GROUPS[g];
    if (n === undefined) throw new NetlinkError("subscribe events", 22, undefined, `unknown event group "${g}"`);
    mask |= 1 << (n - 1);
  }
  const a = addon();
  let fd: number;
  const ns = typeof netns === "string" ? Netns.open(netns) : netns;
  try {
    fd = ns ? a.nlOpen(NETLINK_ROUTE, mask, ns.fd) : a.nlOpen(NETLINK_ROUTE, mask);
  } catch (e) {
    throw isSysError(e) ? new NetlinkError("subscribe events", e.errno) : e;
  } finally {
    if (typeof netns === "string") ns?.close();
  }
  let closed = false;
  const drain = (): void => {
    while (!closed) {
      let datagram: Buffer | null;
      try {
        datagram = a.nlRecv(fd);
      } catch (e) {
        if (isSysError(e, "ENOBUFS")) {
          onOverflow?.();
          continue;
        }
        throw e;
      }
      if (datagram === null) return;
      forEachMessage(datagram, (m) => {
        const ev = decodeEvent(m);
        if (ev && !closed) onEvent(ev);
      });
    }
  };
  // libuv stops a poll handle when the socket reports an error (POLLERR, as after an
  // overflow) and calls back with a negative status: drain, then watch again.
  const onReadable = (status: number): void => {
    drain();
    if (status < 0 && !closed) {
      watcher.stop();
      watcher = new a.FdWatcher(fd, onReadable);
    }
  };
  let watcher = new a.FdWatcher(fd, onReadable);
  return {
    close() {
      if (closed) return;
      closed = true;
      watcher.stop(); // before close(fd): uv_poll must not watch a closed descriptor
      a.close(fd);
    },
  };
}
