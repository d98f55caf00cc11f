// Rtnl: a NETLINK_ROUTE socket bound to one network namespace, with typed verbs for
// links, addresses, routes, neighbours, FDB entries and traffic control (qdiscs, filters)
// (vishvananda/netlink's shape).
// Fast verbs are synchronous; slow ones (link delete, netns moves) have async variants
// that run on the thread pool over a second socket (transport.ts), serialised by a per-socket
// queue. Each verb's request and the reading of its reply are one Exchange, written once;
// sending it on this thread or on the thread pool is the only difference.
import type { Netns } from "../netns.ts";
import { type Addr, type AddrFilter, type AddrSpec, decodeAddr, encodeAddr } from "./address.ts";
import { RtnlBatch } from "./batch.ts";
import { forEachMessage, type MessageWriter, NLM_F_ECHO, NLM_F_REQUEST, NLMSG_ERROR, parseError } from "./codec.ts";
import {
  AF_BRIDGE,
  AF_INET,
  AF_INET6,
  AF_UNSPEC,
  afOf,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELNEIGH,
  RTM_DELQDISC,
  RTM_DELROUTE,
  RTM_DELTFILTER,
  RTM_GETADDR,
  RTM_GETLINK,
  RTM_GETNEIGH,
  RTM_GETQDISC,
  RTM_GETROUTE,
  RTM_GETTFILTER,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWQDISC,
  RTM_NEWROUTE,
  RTM_NEWTFILTER,
  RTM_SETLINK,
} from "./constants.ts";
import { NetlinkError } from "./error.ts";
import {
  type BridgePortChanges,
  type BridgeVlan,
  type BridgeVlanOptions,
  decodeBridgeVlans,
  decodeLink,
  encodeBridgePortSet,
  encodeBridgeVlan,
  encodeLinkAdd,
  encodeLinkRef,
  encodeLinkSet,
  IFINFOMSG_LEN,
  IFLA_EXT_MASK,
  type Link,
  type LinkChanges,
  type LinkRef,
  type LinkSpec,
  linkIndexOf,
  linkRefsOf,
  RTEXT_FILTER_BRVLAN,
  RTEXT_FILTER_SKIP_STATS,
} from "./link.ts";
import {
  decodeFdb,
  decodeNeigh,
  encodeFdb,
  encodeNeigh,
  encodeNeighDump,
  type FdbEntry,
  type FdbSpec,
  type Neigh,
  type NeighFilter,
  type NeighSpec,
} from "./neigh.ts";
import {
  decodeRoute,
  encodeRoute,
  encodeRouteDump,
  matchesRoute,
  type Route,
  type RouteFilter,
  type RouteSpec,
  routeTitle,
} from "./route.ts";
import {
  decodeFilter,
  decodeQdisc,
  encodeFilter,
  encodeFilterDump,
  encodeFilterRef,
  encodeQdisc,
  encodeQdiscRef,
  type Filter,
  type FilterRef,
  type FilterSpec,
  filterParentId,
  formatHandle,
  type Qdisc,
  type QdiscRef,
  type QdiscSpec,
  qdiscParentId,
  writeTcmsg,
} from "./tc.ts";
import {
  ACK,
  APPEND,
  CREATE,
  checkReply,
  type Decode,
  dumpOf,
  type Encode,
  type Exchange,
  REPLACE,
  RtnlSocket,
  raw,
  requestOf,
} from "./transport.ts";

/** The link in a reply: a lookup's answer, or what a NLM_F_ECHO creation sent back. */
function linkIn(reply: Buffer): Link | undefined {
  let link: Link | undefined;
  forEachMessage(reply, (m) => {
    if (m.type === RTM_NEWLINK && !link) link = decodeLink(m);
  });
  return link;
}

const ENODEV = 19;

/**
 * A lookup's reply: the link, or null for ENODEV without building (and throwing) a NetlinkError
 * first: an ADD's lookup of its not-yet-made pod interface is expected to miss, and an Error's
 * stack capture costs more than the rest of the lookup's JavaScript.
 */
function linkOrNone(reply: Buffer, op: string): Link | null {
  let missing = false;
  forEachMessage(reply, (m) => {
    if (m.type === NLMSG_ERROR && parseError(m).errno === ENODEV) missing = true;
  });
  if (missing) return null;
  checkReply(reply, op);
  return linkIn(reply) ?? null;
}

function linkAddError(e: unknown, op: string, spec: LinkSpec): unknown {
  // Missing kinds come with extack text ("Unknown device type"); missing options do not.
  if (e instanceof NetlinkError && e.code === "EOPNOTSUPP" && !e.kernelMessage) {
    return new NetlinkError(op, e.errno, undefined, `this kernel does not support a requested ${spec.kind} option`);
  }
  return e;
}

function linkGetOf(ref: LinkRef): Exchange<Link | null> {
  const op = `link show ${ref}`;
  return {
    op,
    message: (build) => build(RTM_GETLINK, NLM_F_REQUEST, (w) => encodeLinkRef(w, ref, RTEXT_FILTER_SKIP_STATS)),
    reply: (reply) => linkOrNone(reply, op),
  };
}

function linkListOf(): Exchange<Link[]> {
  return dumpOf(RTM_GETLINK, encodeLinkDump, decodeLink, "link list");
}

function linkDelOf(ref: LinkRef): Exchange<Buffer> {
  return requestOf(RTM_DELLINK, ACK, (w) => encodeLinkRef(w, ref), `link del ${ref}`, raw);
}

function addrListOf(filter: AddrFilter): Exchange<Addr[]> {
  return dumpOf(
    RTM_GETADDR,
    (w) => {
      const h = w.struct(8);
      w.putU8(h, filter.family === undefined ? AF_UNSPEC : afOf(filter.family));
    },
    (m) => {
      const a = decodeAddr(m);
      return a && (filter.ifindex === undefined || a.ifindex === filter.ifindex) ? a : undefined;
    },
    "addr list",
  );
}

/**
 * Where a socket's async verbs whose kernel part is short (linkGetAsync, addrListAsync,
 * RtnlBatch.runAsync) run, asked at each request. Such a request takes ~0.1 ms; the hop to the
 * thread pool and back costs more than that when nothing else is going on, as in a plugin
 * process. A resident server that runs several invocations at once says no while it does: then
 * another thread may hold the rtnl lock, and this thread must not wait for it. (Creating,
 * deleting and moving links always go to the pool: their kernel part is long, or overlaps other
 * work.) Given to Rtnl.open by whoever opens the socket; by default, inline.
 */
export interface NetlinkScheduling {
  shortRequestsInline(): boolean;
}

const INLINE: NetlinkScheduling = { shortRequestsInline: () => true };

export class Rtnl {
  private constructor(
    private readonly socket: RtnlSocket,
    private readonly scheduling: NetlinkScheduling,
  ) {}

  /** The synchronous socket. */
  get fd(): number {
    return this.socket.fd;
  }

  /** Where this socket lives, for messages. */
  get netnsPath(): string | undefined {
    return this.socket.netnsPath;
  }

  /**
   * Opens a NETLINK_ROUTE socket in `netns` (an open Netns, a path like /proc/PID/ns/net
   * or /run/netns/x, or a bare name under /run/netns), or in the current namespace.
   * The socket stays bound to that namespace whatever the thread does later. `scheduling`
   * places its short async requests (default: on this thread).
   */
  static open(netns?: Netns | string, scheduling: NetlinkScheduling = INLINE): Rtnl {
    return new Rtnl(RtnlSocket.open(netns), scheduling);
  }

  /** Closes the socket(s). An async request in flight finishes; queued ones are refused (EBADF). */
  close(): void {
    this.socket.close();
  }

  // ---------------------------------------------------------------- sending

  /**
   * Where every async verb's exchange goes: the thread pool, or this thread for one whose
   * kernel part is short when the socket's scheduling allows it (the only place that asks).
   */
  private async sendAsync<T>(x: Exchange<T>, short: boolean): Promise<T> {
    if (short && this.scheduling.shortRequestsInline()) return this.socket.send(x);
    return this.socket.sendOnPool(x);
  }

  /**
   * Sends one request (set NLM_F_ACK in `flags` for anything but a get) and returns the raw
   * reply messages. Kernel errors become NetlinkError named after `op`.
   */
  request(type: number, flags: number, encode: Encode, op: string): Buffer {
    return this.socket.send(requestOf(type, flags, encode, op, raw));
  }

  /** Dumps (NLM_F_DUMP) and decodes every reply message; retries interrupted dumps. */
  dump<T>(type: number, encode: Encode, decode: Decode<T>, op: string): T[] {
    return this.socket.send(dumpOf(type, encode, decode, op));
  }

  /**
   * Requests sent to the kernel in one message, answered in order (see RtnlBatch): the pod
   * side of an ADD in one round trip, on the thread pool, so this thread never waits for the
   * kernel's rtnl lock that concurrent ADDs' link creations hold.
   */
  batch(): RtnlBatch {
    return new RtnlBatch((type, flags, encode) => Buffer.from(this.socket.build(type, flags, encode)), {
      send: (x) => this.socket.send(x),
      sendAsync: (x) => this.sendAsync(x, true),
    });
  }

  // ---------------------------------------------------------------- links

  /** ifindex of a link given by name or index (ENODEV as a NetlinkError naming `op`). */
  linkIndex(ref: LinkRef, op = `link ${ref}`): number {
    if (typeof ref === "number") return ref;
    try {
      const reply = this.request(RTM_GETLINK, NLM_F_REQUEST, (w) => encodeLinkRef(w, ref, RTEXT_FILTER_SKIP_STATS), op);
      let index = 0;
      forEachMessage(reply, (m) => {
        if (m.type === RTM_NEWLINK) index = linkIndexOf(m);
      });
      return index;
    } catch (e) {
      if (e instanceof NetlinkError && e.code === "ENODEV") {
        throw new NetlinkError(op, e.errno, undefined, `no such device "${ref}"`);
      }
      throw e;
    }
  }

  /** Resolves names to indexes before encoding starts (resolution reuses the writer). */
  private resolveAll(refs: (LinkRef | null | undefined)[], op: string): (ref: LinkRef) => number {
    const found = new Map<LinkRef, number>();
    for (const ref of refs) if (ref !== undefined && ref !== null) found.set(ref, this.linkIndex(ref, op));
    return (ref) => found.get(ref) ?? (typeof ref === "number" ? ref : 0);
  }

  /**
   * Creates a link (veth with its peer directly in another netns, bridge, vxlan, macvlan, dummy,
   * ifb). Returns the new link as the kernel echoes it (NLM_F_ECHO, kernels since 6.1: index,
   * MAC, ... in the same round trip), or undefined from an older kernel.
   */
  linkAdd(spec: LinkSpec): Link | undefined {
    return this.socket.send(this.linkAddOf(spec));
  }

  /**
   * linkAdd on the thread pool: the kernel's part of creating a veth (~0.5-1 ms) then overlaps
   * what this thread does meanwhile (an ADD's IPAM transaction). Names in `spec` are resolved
   * here first, synchronously.
   */
  async linkAddAsync(spec: LinkSpec): Promise<Link | undefined> {
    return this.sendAsync(this.linkAddOf(spec), false);
  }

  private linkAddOf(spec: LinkSpec): Exchange<Link | undefined> {
    const op = `link add ${spec.name}`;
    const resolve = this.resolveAll(linkRefsOf(spec), op);
    return {
      op,
      message: (build) => build(RTM_NEWLINK, CREATE | NLM_F_ECHO, (w) => encodeLinkAdd(w, spec, resolve)),
      reply: (reply) => {
        try {
          checkReply(reply, op);
        } catch (e) {
          throw linkAddError(e, op, spec);
        }
        return linkIn(reply);
      },
    };
  }

  /** Changes a link; a name is resolved by the kernel (or first, when renaming). */
  linkSet(ref: LinkRef, changes: LinkChanges): void {
    this.socket.send(this.linkSetOf(ref, changes));
  }

  /** linkSet on the thread pool, for moves to another netns (the kernel waits ~20 ms). */
  async linkSetAsync(ref: LinkRef, changes: LinkChanges): Promise<void> {
    await this.sendAsync(this.linkSetOf(ref, changes), false);
  }

  private linkSetOf(ref: LinkRef, changes: LinkChanges): Exchange<Buffer> {
    const op = `link set ${ref}`;
    // A rename carries the new name in IFLA_IFNAME, so the link must then be named by index.
    const renameByName = typeof ref === "string" && changes.name !== undefined;
    const resolve = this.resolveAll([changes.master, renameByName ? ref : undefined], op);
    const index = typeof ref === "number" ? ref : renameByName ? resolve(ref) : 0;
    const encode: Encode = (w) => encodeLinkSet(w, index, typeof ref === "string" ? ref : undefined, changes, resolve);
    return requestOf(RTM_SETLINK, ACK, encode, op, raw);
  }

  /** The link, or null when there is none by that name/index. */
  linkGet(ref: LinkRef): Link | null {
    return this.socket.send(linkGetOf(ref));
  }

  /**
   * linkGet on the thread pool: this thread does not wait while other threads hold the rtnl
   * lock. On this thread instead when the socket's scheduling says so.
   */
  async linkGetAsync(ref: LinkRef): Promise<Link | null> {
    return this.sendAsync(linkGetOf(ref), true);
  }

  linkList(): Link[] {
    return this.socket.send(linkListOf());
  }

  /** linkList with the kernel's dump on the thread pool. */
  async linkListAsync(): Promise<Link[]> {
    return this.sendAsync(linkListOf(), false);
  }

  /** Deletes a link (ENODEV when missing). Blocks ~20 ms in the kernel: prefer linkDelAsync. */
  linkDel(ref: LinkRef): void {
    this.socket.send(linkDelOf(ref));
  }

  async linkDelAsync(ref: LinkRef): Promise<void> {
    await this.sendAsync(linkDelOf(ref), false);
  }

  /** Per-port bridge settings (hairpin, learning, isolated) via AF_BRIDGE IFLA_PROTINFO. */
  bridgePortSet(port: LinkRef, changes: BridgePortChanges): void {
    const op = `bridge link set ${port}`;
    const index = this.linkIndex(port, op);
    this.request(RTM_SETLINK, ACK, (w) => encodeBridgePortSet(w, index, changes), op);
  }

  /** Adds VLAN `vid` to a bridge port (or to the bridge itself with `self`). */
  bridgeVlanAdd(dev: LinkRef, vid: number, options: BridgeVlanOptions = {}): void {
    const op = `bridge vlan add vid ${vid} dev ${dev}`;
    const index = this.linkIndex(dev, op);
    try {
      this.request(RTM_SETLINK, ACK, (w) => encodeBridgeVlan(w, index, vid, options), op);
    } catch (e) {
      if (e instanceof NetlinkError && e.code === "EOPNOTSUPP" && !e.kernelMessage) {
        throw new NetlinkError(op, e.errno, undefined, "this kernel has no bridge VLAN support (CONFIG_BRIDGE_VLAN_FILTERING)");
      }
      throw e;
    }
  }

  bridgeVlanDel(dev: LinkRef, vid: number, options: { self?: boolean } = {}): void {
    const op = `bridge vlan del vid ${vid} dev ${dev}`;
    const index = this.linkIndex(dev, op);
    this.request(RTM_DELLINK, ACK, (w) => encodeBridgeVlan(w, index, vid, options), op);
  }

  /** VLANs of every bridge port and bridge (optionally of one device). */
  bridgeVlanList(dev?: LinkRef): BridgeVlan[] {
    const ifindex = dev === undefined ? undefined : this.linkIndex(dev, `bridge vlan show dev ${dev}`);
    const out: BridgeVlan[] = [];
    this.dump(
      RTM_GETLINK,
      (w) => {
        const h = w.struct(IFINFOMSG_LEN);
        w.putU8(h, AF_BRIDGE);
        w.u32(IFLA_EXT_MASK, RTEXT_FILTER_BRVLAN);
      },
      (m) => {
        if (ifindex === undefined || linkIndexOf(m) === ifindex) decodeBridgeVlans(m, out);
        return undefined;
      },
      "bridge vlan show",
    );
    return out;
  }

  // ---------------------------------------------------------------- addresses

  private addr(type: number, flags: number, verb: string, dev: LinkRef, addr: string | AddrSpec): void {
    const spec = typeof addr === "string" ? { cidr: addr } : addr;
    const op = `addr ${verb} ${spec.cidr} dev ${dev}`;
    const index = this.linkIndex(dev, op);
    this.request(type, flags, (w) => encodeAddr(w, index, spec, type === RTM_DELADDR), op);
  }

  /** Adds an address ("10.0.0.2/24" or an AddrSpec with flags). EEXIST when present. */
  addrAdd(dev: LinkRef, addr: string | AddrSpec): void {
    this.addr(RTM_NEWADDR, CREATE, "add", dev, addr);
  }

  /** Adds or updates an address (idempotent). */
  addrReplace(dev: LinkRef, addr: string | AddrSpec): void {
    this.addr(RTM_NEWADDR, REPLACE, "replace", dev, addr);
  }

  /** Deletes an address (EADDRNOTAVAIL when absent). */
  addrDel(dev: LinkRef, addr: string | AddrSpec): void {
    this.addr(RTM_DELADDR, ACK, "del", dev, addr);
  }

  addrList(filter: AddrFilter = {}): Addr[] {
    return this.socket.send(addrListOf(filter));
  }

  /** addrList on the thread pool, or on this thread when the socket's scheduling says so. */
  async addrListAsync(filter: AddrFilter = {}): Promise<Addr[]> {
    return this.sendAsync(addrListOf(filter), true);
  }

  // ---------------------------------------------------------------- routes

  private route(type: number, flags: number, verb: string, spec: RouteSpec): void {
    const op = `route ${verb} ${routeTitle(spec)}`;
    const oif = spec.dev === undefined ? 0 : this.linkIndex(spec.dev, op);
    this.request(type, flags, (w) => encodeRoute(w, spec, oif, type === RTM_DELROUTE), op);
  }

  routeAdd(spec: RouteSpec): void {
    this.route(RTM_NEWROUTE, CREATE, "add", spec);
  }

  /** Adds or replaces the route for this destination/table/metric (idempotent). */
  routeReplace(spec: RouteSpec): void {
    this.route(RTM_NEWROUTE, REPLACE, "replace", spec);
  }

  /** Deletes a route; ESRCH when none matches. */
  routeDel(spec: RouteSpec): void {
    this.route(RTM_DELROUTE, ACK, "del", spec);
  }

  /** Routes of the main table by default (`table: "all"` for every table); no cache clones. */
  routeList(filter: RouteFilter = {}): Route[] {
    return this.dump(
      RTM_GETROUTE,
      (w) => encodeRouteDump(w, filter.family),
      (m) => {
        const r = decodeRoute(m);
        return r && matchesRoute(r, filter) ? r : undefined;
      },
      "route list",
    );
  }

  // ---------------------------------------------------------------- neighbours

  private neigh(type: number, flags: number, verb: string, spec: NeighSpec): void {
    const op = `neigh ${verb} ${spec.dst} dev ${spec.dev}`;
    const index = this.linkIndex(spec.dev, op);
    this.request(type, flags, (w) => encodeNeigh(w, index, spec, type === RTM_DELNEIGH), op);
  }

  neighAdd(spec: NeighSpec): void {
    this.neigh(RTM_NEWNEIGH, CREATE, "add", spec);
  }

  neighReplace(spec: NeighSpec): void {
    this.neigh(RTM_NEWNEIGH, REPLACE, "replace", spec);
  }

  neighDel(spec: Pick<NeighSpec, "dev" | "dst">): void {
    this.neigh(RTM_DELNEIGH, ACK, "del", spec);
  }

  /** ARP and NDP entries (not FDB entries: see fdbList). */
  neighList(filter: NeighFilter = {}): Neigh[] {
    const af = filter.family === undefined ? AF_UNSPEC : filter.family === 4 ? AF_INET : AF_INET6;
    return this.dump(
      RTM_GETNEIGH,
      (w) => encodeNeighDump(w, af),
      (m) => {
        const n = decodeNeigh(m);
        return n && (filter.ifindex === undefined || n.ifindex === filter.ifindex) ? n : undefined;
      },
      "neigh list",
    );
  }

  // ---------------------------------------------------------------- FDB

  private fdb(type: number, flags: number, verb: string, spec: FdbSpec): void {
    const op = `fdb ${verb} ${spec.mac}${spec.dst ? ` dst ${spec.dst}` : ""} dev ${spec.dev}`;
    const index = this.linkIndex(spec.dev, op);
    this.request(type, flags, (w) => encodeFdb(w, index, spec), op);
  }

  fdbAdd(spec: FdbSpec): void {
    this.fdb(RTM_NEWNEIGH, CREATE, "add", spec);
  }

  /** Adds another destination for the same MAC (VXLAN head-end replication with 00:00:00:00:00:00). */
  fdbAppend(spec: FdbSpec): void {
    this.fdb(RTM_NEWNEIGH, APPEND, "append", spec);
  }

  fdbReplace(spec: FdbSpec): void {
    this.fdb(RTM_NEWNEIGH, REPLACE, "replace", spec);
  }

  fdbDel(spec: FdbSpec): void {
    this.fdb(RTM_DELNEIGH, ACK, "del", spec);
  }

  /** Forwarding database entries of every bridge port and VXLAN device (optionally one device). */
  fdbList(filter: { ifindex?: number } = {}): FdbEntry[] {
    return this.dump(
      RTM_GETNEIGH,
      (w) => encodeNeighDump(w, AF_BRIDGE),
      (m) => {
        const e = decodeFdb(m);
        return e && (filter.ifindex === undefined || e.ifindex === filter.ifindex) ? e : undefined;
      },
      "fdb list",
    );
  }

  // ---------------------------------------------------------------- traffic control

  private qdisc(flags: number, verb: string, spec: QdiscSpec): void {
    const parent = spec.kind === "ingress" ? "ingress" : formatHandle(qdiscParentId(spec.parent ?? "root"));
    const op = `qdisc ${verb} dev ${spec.dev} ${parent} ${spec.kind}`;
    const index = this.linkIndex(spec.dev, op);
    this.request(RTM_NEWQDISC, flags, (w) => encodeQdisc(w, index, spec), op);
  }

  /** Adds a qdisc (EEXIST when one with that handle is there). */
  qdiscAdd(spec: QdiscSpec): void {
    this.qdisc(CREATE, "add", spec);
  }

  /** Puts `spec` at its parent, replacing or updating what is there (idempotent). */
  qdiscReplace(spec: QdiscSpec): void {
    this.qdisc(REPLACE, "replace", spec);
  }

  /**
   * Deletes the qdisc at `ref.parent`. ENOENT when only the default (handle 0) is there,
   * ENODEV when the device is gone, EINVAL when `ref.kind` names another kind.
   */
  qdiscDel(ref: QdiscRef): void {
    const op = `qdisc del dev ${ref.dev} ${formatHandle(qdiscParentId(ref.parent))}`;
    const index = this.linkIndex(ref.dev, op);
    this.request(RTM_DELQDISC, ACK, (w) => encodeQdiscRef(w, index, ref), op);
  }

  /** The qdisc at `ref.parent` (the default one included), or null when there is none. */
  qdiscGet(ref: QdiscRef): Qdisc | null {
    const op = `qdisc show dev ${ref.dev} ${formatHandle(qdiscParentId(ref.parent))}`;
    const index = this.linkIndex(ref.dev, op);
    try {
      // Without NLM_F_ECHO the kernel sends the answer only to RTNLGRP_TC listeners.
      const reply = this.request(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_ECHO, (w) => encodeQdiscRef(w, index, ref), op);
      let q: Qdisc | null = null;
      forEachMessage(reply, (m) => {
        if (m.type === RTM_NEWQDISC) q = decodeQdisc(m);
      });
      return q;
    } catch (e) {
      if (e instanceof NetlinkError && e.code === "ENOENT") return null;
      throw e;
    }
  }

  /** Every qdisc of the namespace, or of one device. */
  qdiscList(dev?: LinkRef): Qdisc[] {
    const ifindex = dev === undefined ? undefined : this.linkIndex(dev, `qdisc show dev ${dev}`);
    return this.dump(
      RTM_GETQDISC,
      (w) => writeTcmsg(w, ifindex ?? 0, 0, 0),
      (m) => {
        const q = decodeQdisc(m);
        return ifindex === undefined || q.ifindex === ifindex ? q : undefined;
      },
      "qdisc list",
    );
  }

  /** Adds or replaces the filter with this parent/prio/handle (idempotent). */
  filterReplace(spec: FilterSpec): void {
    const op = `filter replace dev ${spec.dev} parent ${formatHandle(filterParentId(spec.parent))} prio ${spec.prio ?? 1} ${spec.kind}`;
    const index = this.linkIndex(spec.dev, op);
    const targets = (spec.actions ?? []).map((a) => this.linkIndex(a.dev, op));
    this.request(RTM_NEWTFILTER, REPLACE, (w) => encodeFilter(w, index, spec, targets), op);
  }

  /** Deletes one filter, or every filter at `ref.prio` when `ref.handle` is 0 (ENOENT when none). */
  filterDel(ref: FilterRef): void {
    const op = `filter del dev ${ref.dev} parent ${formatHandle(filterParentId(ref.parent))} prio ${ref.prio}`;
    const index = this.linkIndex(ref.dev, op);
    this.request(RTM_DELTFILTER, ACK, (w) => encodeFilterRef(w, index, ref), op);
  }

  /** The filters attached to `parent` on `dev` (an empty list when that qdisc is absent). */
  filterList(dev: LinkRef, parent: "ingress" | number): Filter[] {
    const op = `filter show dev ${dev} parent ${formatHandle(filterParentId(parent))}`;
    const index = this.linkIndex(dev, op);
    return this.dump(RTM_GETTFILTER, (w) => encodeFilterDump(w, index, parent), decodeFilter, op);
  }
}

function encodeLinkDump(w: MessageWriter): void {
  w.struct(IFINFOMSG_LEN);
  w.u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS); // counters are large and nobody here reads them
}
