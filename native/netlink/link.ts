// Links (RTM_*LINK): the typed specs berth creates (veth, bridge, vxlan, macvlan, dummy, ifb),
// the Link struct decoded from the kernel, and bridge-port / bridge-VLAN settings.
import type { Netns } from "../netns.ts";
import { Attrs, bytesToMac, InvalidValueError, type MessageView, type MessageWriter } from "./codec.ts";
import { AF_BRIDGE, IFF_ALLMULTI, IFF_LOWER_UP, IFF_PROMISC, IFF_UP } from "./constants.ts";

export const IFINFOMSG_LEN = 16;

export const IFLA_ADDRESS = 1;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_MASTER = 10;
export const IFLA_PROTINFO = 12;
export const IFLA_TXQLEN = 13;
export const IFLA_OPERSTATE = 16;
export const IFLA_IFALIAS = 20;
export const IFLA_LINKINFO = 18;
export const IFLA_AF_SPEC = 26;
export const IFLA_NET_NS_FD = 28;
export const IFLA_EXT_MASK = 29;
export const IFLA_LINK_NETNSID = 37;

const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const IFLA_INFO_SLAVE_KIND = 4;
const IFLA_INFO_SLAVE_DATA = 5;

const VETH_INFO_PEER = 1;

const IFLA_BR_STP_STATE = 5;
const IFLA_BR_VLAN_FILTERING = 7;
const IFLA_BR_MCAST_SNOOPING = 23;
const IFLA_BR_VLAN_DEFAULT_PVID = 39;

const IFLA_VXLAN_ID = 1;
const IFLA_VXLAN_GROUP = 2;
const IFLA_VXLAN_LINK = 3;
const IFLA_VXLAN_LOCAL = 4;
const IFLA_VXLAN_TTL = 5;
const IFLA_VXLAN_TOS = 6;
const IFLA_VXLAN_LEARNING = 7;
const IFLA_VXLAN_AGEING = 8;
const IFLA_VXLAN_L2MISS = 13;
const IFLA_VXLAN_L3MISS = 14;
const IFLA_VXLAN_PORT = 15;
const IFLA_VXLAN_GROUP6 = 16;
const IFLA_VXLAN_LOCAL6 = 17;
const IFLA_VXLAN_UDP_CSUM = 18;
const IFLA_VXLAN_UDP_ZERO_CSUM6_TX = 19;
const IFLA_VXLAN_UDP_ZERO_CSUM6_RX = 20;
const IFLA_VXLAN_GBP = 23;

const IFLA_MACVLAN_MODE = 1;

const IFLA_BRPORT_STATE = 1;
const IFLA_BRPORT_MODE = 4; // hairpin
const IFLA_BRPORT_LEARNING = 8;
const IFLA_BRPORT_UNICAST_FLOOD = 9;
const IFLA_BRPORT_ISOLATED = 33;

const IFLA_BRIDGE_FLAGS = 0;
const IFLA_BRIDGE_VLAN_INFO = 2;
const BRIDGE_FLAGS_SELF = 2;
const BRIDGE_VLAN_INFO_PVID = 2;
const BRIDGE_VLAN_INFO_UNTAGGED = 4;

/** IFLA_EXT_MASK bits. */
export const RTEXT_FILTER_BRVLAN = 1 << 1;
export const RTEXT_FILTER_SKIP_STATS = 1 << 3;

// ---------------------------------------------------------------- specs

/** A link by name or by ifindex. */
export type LinkRef = string | number;

/** A network namespace given as an open handle or a raw fd. */
export type NetnsRef = Netns | number;

export function netnsFd(ns: NetnsRef): number {
  return typeof ns === "number" ? ns : ns.fd;
}

interface LinkCommon {
  name: string;
  mtu?: number;
  mac?: string;
  up?: boolean;
  master?: LinkRef;
  txqlen?: number;
  /** Create the link directly in this namespace. */
  netns?: NetnsRef;
}

/**
 * The peer end. It cannot be brought up in the same request: the kernel configures the
 * peer before the pair is linked and answers ENOTCONN. Set it up from its own namespace.
 */
export interface VethPeer {
  name: string;
  mtu?: number;
  mac?: string;
  txqlen?: number;
  /** The peer is created directly in this namespace (no create-then-move). */
  netns?: NetnsRef;
}

export interface VethSpec extends LinkCommon {
  kind: "veth";
  peer: VethPeer;
}

export interface BridgeSpec extends LinkCommon {
  kind: "bridge";
  vlanFiltering?: boolean;
  mcastSnooping?: boolean;
  vlanDefaultPvid?: number;
  // STP is always off: berth bridges have no loops and must not delay forwarding.
}

export interface VxlanSpec extends LinkCommon {
  kind: "vxlan";
  vni: number;
  /** UDP destination port, default 4789 (the kernel's own default is the legacy 8472). */
  port?: number;
  /** Local VTEP address, IPv4 or IPv6. */
  local?: string;
  /** Multicast group or unicast remote (most overlays leave it unset and use FDB entries). */
  group?: string;
  /** Underlay device (index or name). */
  underlay?: LinkRef;
  learning?: boolean;
  gbp?: boolean;
  ttl?: number;
  tos?: number;
  ageing?: number;
  l2miss?: boolean;
  l3miss?: boolean;
  udpCsum?: boolean;
  udp6ZeroCsumTx?: boolean;
  udp6ZeroCsumRx?: boolean;
}

export type MacvlanMode = "private" | "vepa" | "bridge" | "passthru" | "source";

export interface MacvlanSpec extends LinkCommon {
  kind: "macvlan";
  parent: LinkRef;
  mode?: MacvlanMode;
}

export interface DummySpec extends LinkCommon {
  kind: "dummy";
}

/** Intermediate functional block: a device that traffic is redirected to, to be shaped on its way out. */
export interface IfbSpec extends LinkCommon {
  kind: "ifb";
}

export type LinkSpec = VethSpec | BridgeSpec | VxlanSpec | MacvlanSpec | DummySpec | IfbSpec;

export interface LinkChanges {
  up?: boolean;
  mtu?: number;
  mac?: string;
  /** Rename (the link is then addressed by index). */
  name?: string;
  /** Enslave to this master; null releases it (nomaster). */
  master?: LinkRef | null;
  /** Move into this namespace (slow: the kernel waits for an RCU barrier). */
  netns?: NetnsRef;
  promisc?: boolean;
  allmulti?: boolean;
  txqlen?: number;
  /** The link's alias (IFLA_IFALIAS, at most 255 bytes); "" clears it. */
  alias?: string;
}

export interface BridgePortChanges {
  hairpin?: boolean;
  learning?: boolean;
  isolated?: boolean;
  unicastFlood?: boolean;
}

export interface BridgeVlanOptions {
  pvid?: boolean;
  untagged?: boolean;
  /** Set on the bridge device itself rather than on a port. */
  self?: boolean;
}

// ---------------------------------------------------------------- decoded

export type OperState = "unknown" | "notpresent" | "down" | "lowerlayerdown" | "testing" | "dormant" | "up";
const OPERSTATES: OperState[] = ["unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"];

export interface VxlanInfo {
  vni: number;
  port: number;
  local?: string;
  group?: string;
  underlayIndex?: number;
  learning: boolean;
  gbp: boolean;
  ttl: number;
  tos: number;
  ageing?: number;
  udpCsum: boolean;
  udp6ZeroCsumTx: boolean;
  udp6ZeroCsumRx: boolean;
  l2miss: boolean;
  l3miss: boolean;
}

export interface BridgeInfo {
  vlanFiltering: boolean;
  mcastSnooping: boolean;
  stp: boolean;
  vlanDefaultPvid?: number;
}

export interface MacvlanInfo {
  mode: MacvlanMode | "unknown";
}

/** Settings of a link enslaved to a bridge (from IFLA_INFO_SLAVE_DATA). */
export interface BridgePortInfo {
  state?: number;
  hairpin: boolean;
  learning: boolean;
  isolated: boolean;
  unicastFlood: boolean;
}

export interface Link {
  index: number;
  name: string;
  /** IFLA_INFO_KIND ("veth", "bridge", "vxlan", ...); undefined for physical and loopback devices. */
  kind?: string;
  mtu: number;
  mac?: string;
  flags: number;
  up: boolean;
  /** Carrier (IFF_LOWER_UP). */
  lowerUp: boolean;
  promisc: boolean;
  allmulti: boolean;
  operstate: OperState;
  masterIndex?: number;
  txqlen: number;
  /** Namespace id (in this namespace's numbering) of the netns holding the peer/parent. */
  linkNetnsId?: number;
  /** IFLA_LINK: the veth peer's, macvlan parent's or underlay's ifindex. */
  parentIndex?: number;
  /** IFLA_IFALIAS, when the link has one. */
  alias?: string;
  vxlan?: VxlanInfo;
  bridge?: BridgeInfo;
  macvlan?: MacvlanInfo;
  /** Kind of master this link is enslaved to ("bridge", "bond", ...). */
  slaveKind?: string;
  bridgePort?: BridgePortInfo;
}

// ---------------------------------------------------------------- encoding

const MACVLAN_MODES: Record<MacvlanMode, number> = { private: 1, vepa: 2, bridge: 4, passthru: 8, source: 16 };

function checkName(name: string): void {
  // IFNAMSIZ is 16 with the NUL; the kernel answers a bare EINVAL otherwise.
  if (!name || Buffer.byteLength(name) > 15 || /[\s/:]/.test(name) || name === "." || name === "..") {
    throw new InvalidValueError(`invalid interface name "${name}" (1-15 bytes, no '/', ':' or whitespace)`);
  }
}

function checkU32(what: string, v: number, max = 0xffffffff): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new InvalidValueError(`${what} must be an integer 0..${max}, got ${v}`);
}

/** Writes an ifinfomsg. `up` undefined leaves IFF_UP alone. */
function writeIfinfo(w: MessageWriter, family: number, index: number, up?: boolean, extraSet = 0, extraChange = 0): void {
  const h = w.struct(IFINFOMSG_LEN);
  w.putU8(h, family);
  w.putI32(h + 4, index);
  let flags = extraSet;
  let change = extraChange;
  if (up !== undefined) {
    change |= IFF_UP;
    if (up) flags |= IFF_UP;
  }
  w.putU32(h + 8, flags);
  w.putU32(h + 12, change);
}

function writeCommon(w: MessageWriter, s: { mtu?: number; mac?: string; txqlen?: number; netns?: NetnsRef }): void {
  if (s.mtu !== undefined) {
    checkU32("mtu", s.mtu);
    w.u32(IFLA_MTU, s.mtu);
  }
  if (s.mac !== undefined) w.mac(IFLA_ADDRESS, s.mac);
  if (s.txqlen !== undefined) {
    checkU32("txqlen", s.txqlen);
    w.u32(IFLA_TXQLEN, s.txqlen);
  }
  if (s.netns !== undefined) w.u32(IFLA_NET_NS_FD, netnsFd(s.netns));
}

/** Links a spec refers to (master, parent, underlay), to resolve before encoding. */
export function linkRefsOf(spec: LinkSpec): (LinkRef | undefined)[] {
  return [spec.master, spec.kind === "macvlan" ? spec.parent : undefined, spec.kind === "vxlan" ? spec.underlay : undefined];
}

/** Encodes an RTM_NEWLINK body for `spec`; `resolve` turns link names into indexes. */
export function encodeLinkAdd(w: MessageWriter, spec: LinkSpec, resolve: (ref: LinkRef) => number): void {
  checkName(spec.name);
  writeIfinfo(w, 0, 0, spec.up);
  w.string(IFLA_IFNAME, spec.name);
  writeCommon(w, spec);
  if (spec.master !== undefined) w.u32(IFLA_MASTER, resolve(spec.master));
  if (spec.kind === "macvlan") w.u32(IFLA_LINK, resolve(spec.parent));
  const info = w.nest(IFLA_LINKINFO);
  w.string(IFLA_INFO_KIND, spec.kind);
  switch (spec.kind) {
    case "veth": {
      const peer = spec.peer;
      if (!peer?.name) throw new InvalidValueError("a veth needs peer.name");
      checkName(peer.name);
      const data = w.nest(IFLA_INFO_DATA);
      // VETH_INFO_PEER carries a whole ifinfomsg + IFLA attributes for the peer.
      const p = w.nest(VETH_INFO_PEER, false);
      writeIfinfo(w, 0, 0);
      w.string(IFLA_IFNAME, peer.name);
      writeCommon(w, peer);
      w.end(p);
      w.end(data);
      break;
    }
    case "bridge": {
      const data = w.nest(IFLA_INFO_DATA);
      w.u32(IFLA_BR_STP_STATE, 0);
      if (spec.vlanFiltering !== undefined) w.u8(IFLA_BR_VLAN_FILTERING, spec.vlanFiltering ? 1 : 0);
      if (spec.mcastSnooping !== undefined) w.u8(IFLA_BR_MCAST_SNOOPING, spec.mcastSnooping ? 1 : 0);
      if (spec.vlanDefaultPvid !== undefined) w.u16(IFLA_BR_VLAN_DEFAULT_PVID, spec.vlanDefaultPvid);
      w.end(data);
      break;
    }
    case "vxlan": {
      // The VNI range is left to the kernel, whose extack message says what is wrong.
      checkU32("vni", spec.vni);
      const data = w.nest(IFLA_INFO_DATA);
      w.u32(IFLA_VXLAN_ID, spec.vni);
      const port = spec.port ?? 4789;
      checkU32("port", port, 0xffff);
      w.be16(IFLA_VXLAN_PORT, port);
      if (spec.local !== undefined) w.ip(spec.local.includes(":") ? IFLA_VXLAN_LOCAL6 : IFLA_VXLAN_LOCAL, spec.local);
      if (spec.group !== undefined) w.ip(spec.group.includes(":") ? IFLA_VXLAN_GROUP6 : IFLA_VXLAN_GROUP, spec.group);
      if (spec.underlay !== undefined) w.u32(IFLA_VXLAN_LINK, resolve(spec.underlay));
      if (spec.learning !== undefined) w.u8(IFLA_VXLAN_LEARNING, spec.learning ? 1 : 0);
      if (spec.gbp) w.flag(IFLA_VXLAN_GBP);
      if (spec.ttl !== undefined) w.u8(IFLA_VXLAN_TTL, spec.ttl);
      if (spec.tos !== undefined) w.u8(IFLA_VXLAN_TOS, spec.tos);
      if (spec.ageing !== undefined) w.u32(IFLA_VXLAN_AGEING, spec.ageing);
      if (spec.l2miss !== undefined) w.u8(IFLA_VXLAN_L2MISS, spec.l2miss ? 1 : 0);
      if (spec.l3miss !== undefined) w.u8(IFLA_VXLAN_L3MISS, spec.l3miss ? 1 : 0);
      if (spec.udpCsum !== undefined) w.u8(IFLA_VXLAN_UDP_CSUM, spec.udpCsum ? 1 : 0);
      if (spec.udp6ZeroCsumTx !== undefined) w.u8(IFLA_VXLAN_UDP_ZERO_CSUM6_TX, spec.udp6ZeroCsumTx ? 1 : 0);
      if (spec.udp6ZeroCsumRx !== undefined) w.u8(IFLA_VXLAN_UDP_ZERO_CSUM6_RX, spec.udp6ZeroCsumRx ? 1 : 0);
      w.end(data);
      break;
    }
    case "macvlan": {
      const mode = MACVLAN_MODES[spec.mode ?? "bridge"];
      if (mode === undefined) throw new InvalidValueError(`unknown macvlan mode "${spec.mode}"`);
      const data = w.nest(IFLA_INFO_DATA);
      w.u32(IFLA_MACVLAN_MODE, mode);
      w.end(data);
      break;
    }
    case "dummy":
    case "ifb":
      break;
    default:
      throw new InvalidValueError(`unsupported link kind "${(spec as { kind: string }).kind}"`);
  }
  w.end(info);
}

/** Encodes an RTM_SETLINK body. The link is named by index, or by name when index is 0. */
export function encodeLinkSet(
  w: MessageWriter,
  index: number,
  name: string | undefined,
  c: LinkChanges,
  resolve: (ref: LinkRef) => number,
): void {
  let set = 0;
  let change = 0;
  if (c.promisc !== undefined) {
    change |= IFF_PROMISC;
    if (c.promisc) set |= IFF_PROMISC;
  }
  if (c.allmulti !== undefined) {
    change |= IFF_ALLMULTI;
    if (c.allmulti) set |= IFF_ALLMULTI;
  }
  writeIfinfo(w, 0, index, c.up, set, change);
  if (index === 0 && name !== undefined) w.string(IFLA_IFNAME, name);
  if (c.name !== undefined) {
    checkName(c.name);
    w.string(IFLA_IFNAME, c.name);
  }
  writeCommon(w, c);
  if (c.master !== undefined) w.u32(IFLA_MASTER, c.master === null ? 0 : resolve(c.master));
  if (c.alias !== undefined) {
    if (Buffer.byteLength(c.alias) > 255 || c.alias.includes("\0"))
      throw new InvalidValueError(`link alias must be at most 255 bytes without NUL, got ${JSON.stringify(c.alias)}`);
    w.string(IFLA_IFALIAS, c.alias);
  }
}

/** RTM_SETLINK (AF_BRIDGE) with IFLA_PROTINFO: per-port bridge settings. */
export function encodeBridgePortSet(w: MessageWriter, index: number, c: BridgePortChanges): void {
  writeIfinfo(w, AF_BRIDGE, index);
  const p = w.nest(IFLA_PROTINFO); // br_setlink needs NLA_F_NESTED here
  if (c.hairpin !== undefined) w.u8(IFLA_BRPORT_MODE, c.hairpin ? 1 : 0);
  if (c.learning !== undefined) w.u8(IFLA_BRPORT_LEARNING, c.learning ? 1 : 0);
  if (c.isolated !== undefined) w.u8(IFLA_BRPORT_ISOLATED, c.isolated ? 1 : 0);
  if (c.unicastFlood !== undefined) w.u8(IFLA_BRPORT_UNICAST_FLOOD, c.unicastFlood ? 1 : 0);
  w.end(p);
}

/** RTM_SETLINK / RTM_DELLINK (AF_BRIDGE) with one IFLA_BRIDGE_VLAN_INFO. */
export function encodeBridgeVlan(w: MessageWriter, index: number, vid: number, o: BridgeVlanOptions): void {
  if (!Number.isInteger(vid) || vid < 1 || vid > 4094) throw new InvalidValueError(`VLAN id must be 1..4094, got ${vid}`);
  writeIfinfo(w, AF_BRIDGE, index);
  const spec = w.nest(IFLA_AF_SPEC);
  if (o.self) w.u16(IFLA_BRIDGE_FLAGS, BRIDGE_FLAGS_SELF);
  const info = Buffer.allocUnsafe(4);
  info.writeUInt16LE((o.pvid ? BRIDGE_VLAN_INFO_PVID : 0) | (o.untagged ? BRIDGE_VLAN_INFO_UNTAGGED : 0), 0);
  info.writeUInt16LE(vid, 2);
  w.bytes(IFLA_BRIDGE_VLAN_INFO, info);
  w.end(spec);
}

/** Body of RTM_GETLINK / RTM_DELLINK naming one link (by index, else by name). */
export function encodeLinkRef(w: MessageWriter, ref: LinkRef, extMask?: number): void {
  if (typeof ref === "number") {
    writeIfinfo(w, 0, ref);
  } else {
    checkName(ref);
    writeIfinfo(w, 0, 0);
    w.string(IFLA_IFNAME, ref);
  }
  if (extMask !== undefined) w.u32(IFLA_EXT_MASK, extMask);
}

// ---------------------------------------------------------------- decoding

export function linkIndexOf(m: MessageView): number {
  return m.buf.readInt32LE(m.payload + 4);
}

const MACVLAN_MODE_NAMES = new Map(Object.entries(MACVLAN_MODES).map(([k, v]) => [v, k as MacvlanMode]));

export function decodeLink(m: MessageView): Link {
  const { buf, payload, end } = m;
  const flags = buf.readUInt32LE(payload + 8);
  const link: Link = {
    index: buf.readInt32LE(payload + 4),
    name: "",
    mtu: 0,
    flags,
    up: (flags & IFF_UP) !== 0,
    lowerUp: (flags & IFF_LOWER_UP) !== 0,
    promisc: (flags & IFF_PROMISC) !== 0,
    allmulti: (flags & IFF_ALLMULTI) !== 0,
    operstate: "unknown",
    txqlen: 0,
  };
  // One pass with a switch: this runs for every link of a dump (a thousand and more), where
  // indexing ~50 attributes per message only to read ten would dominate the cost.
  let parent = 0;
  let off = payload + IFINFOMSG_LEN;
  while (off + 4 <= end) {
    const len = buf.readUInt16LE(off);
    if (len < 4 || off + len > end) break;
    const at = off + 4;
    const size = len - 4;
    switch (buf.readUInt16LE(off + 2) & 0x3fff) {
      case IFLA_IFNAME: {
        let e = at + size;
        while (e > at && buf[e - 1] === 0) e--;
        link.name = buf.toString("utf8", at, e);
        break;
      }
      case IFLA_MTU:
        link.mtu = buf.readUInt32LE(at);
        break;
      case IFLA_TXQLEN:
        link.txqlen = buf.readUInt32LE(at);
        break;
      case IFLA_IFALIAS: {
        let e = at + size;
        while (e > at && buf[e - 1] === 0) e--;
        if (e > at) link.alias = buf.toString("utf8", at, e);
        break;
      }
      case IFLA_OPERSTATE:
        link.operstate = OPERSTATES[buf[at] as number] ?? "unknown";
        break;
      case IFLA_ADDRESS:
        if (size > 0) link.mac = bytesToMac(buf, at, size);
        break;
      case IFLA_MASTER: {
        const master = buf.readUInt32LE(at);
        if (master) link.masterIndex = master;
        break;
      }
      case IFLA_LINK_NETNSID:
        link.linkNetnsId = buf.readInt32LE(at);
        break;
      case IFLA_LINK:
        parent = buf.readUInt32LE(at);
        break;
      case IFLA_LINKINFO:
        decodeLinkInfo(new Attrs(buf, at, at + size), link);
        break;
    }
    off += (len + 3) & ~3;
  }
  // Physical devices report themselves as IFLA_LINK; a peer in another netns may share our index.
  if (parent && (parent !== link.index || link.linkNetnsId !== undefined)) link.parentIndex = parent;
  return link;
}

function decodeLinkInfo(info: Attrs, link: Link): void {
  const kind = info.string(IFLA_INFO_KIND);
  if (kind) link.kind = kind;
  const data = info.nested(IFLA_INFO_DATA);
  if (data) {
    if (kind === "vxlan") {
      const v: VxlanInfo = {
        vni: data.u32(IFLA_VXLAN_ID) ?? 0,
        port: data.be16(IFLA_VXLAN_PORT) ?? 0,
        learning: data.u8(IFLA_VXLAN_LEARNING) === 1,
        gbp: data.has(IFLA_VXLAN_GBP),
        ttl: data.u8(IFLA_VXLAN_TTL) ?? 0,
        tos: data.u8(IFLA_VXLAN_TOS) ?? 0,
        udpCsum: data.u8(IFLA_VXLAN_UDP_CSUM) === 1,
        udp6ZeroCsumTx: data.u8(IFLA_VXLAN_UDP_ZERO_CSUM6_TX) === 1,
        udp6ZeroCsumRx: data.u8(IFLA_VXLAN_UDP_ZERO_CSUM6_RX) === 1,
        l2miss: data.u8(IFLA_VXLAN_L2MISS) === 1,
        l3miss: data.u8(IFLA_VXLAN_L3MISS) === 1,
      };
      const local = data.ip(IFLA_VXLAN_LOCAL6) ?? data.ip(IFLA_VXLAN_LOCAL);
      if (local !== undefined && local !== "0.0.0.0" && local !== "::") v.local = local;
      const group = data.ip(IFLA_VXLAN_GROUP6) ?? data.ip(IFLA_VXLAN_GROUP);
      if (group !== undefined && group !== "0.0.0.0" && group !== "::") v.group = group;
      const underlay = data.u32(IFLA_VXLAN_LINK);
      if (underlay) v.underlayIndex = underlay;
      const ageing = data.u32(IFLA_VXLAN_AGEING);
      if (ageing !== undefined) v.ageing = ageing;
      link.vxlan = v;
    } else if (kind === "bridge") {
      const b: BridgeInfo = {
        vlanFiltering: data.u8(IFLA_BR_VLAN_FILTERING) === 1,
        mcastSnooping: data.u8(IFLA_BR_MCAST_SNOOPING) === 1,
        stp: (data.u32(IFLA_BR_STP_STATE) ?? 0) !== 0,
      };
      const pvid = data.u16(IFLA_BR_VLAN_DEFAULT_PVID);
      if (pvid !== undefined) b.vlanDefaultPvid = pvid;
      link.bridge = b;
    } else if (kind === "macvlan") {
      link.macvlan = { mode: MACVLAN_MODE_NAMES.get(data.u32(IFLA_MACVLAN_MODE) ?? 0) ?? "unknown" };
    }
  }
  const slaveKind = info.string(IFLA_INFO_SLAVE_KIND);
  if (slaveKind) {
    link.slaveKind = slaveKind;
    const sd = info.nested(IFLA_INFO_SLAVE_DATA);
    if (sd && slaveKind === "bridge") {
      const port: BridgePortInfo = {
        hairpin: sd.u8(IFLA_BRPORT_MODE) === 1,
        learning: sd.u8(IFLA_BRPORT_LEARNING) === 1,
        isolated: sd.u8(IFLA_BRPORT_ISOLATED) === 1,
        unicastFlood: sd.u8(IFLA_BRPORT_UNICAST_FLOOD) === 1,
      };
      const state = sd.u8(IFLA_BRPORT_STATE);
      if (state !== undefined) port.state = state;
      link.bridgePort = port;
    }
  }
}

export interface BridgeVlan {
  ifindex: number;
  vid: number;
  pvid: boolean;
  untagged: boolean;
}

/** Decodes the VLANs of one RTM_NEWLINK (AF_BRIDGE) message dumped with RTEXT_FILTER_BRVLAN. */
export function decodeBridgeVlans(m: MessageView, out: BridgeVlan[]): void {
  const ifindex = linkIndexOf(m);
  const a = new Attrs(m.buf, m.payload + IFINFOMSG_LEN, m.end);
  const at = a.offset(IFLA_AF_SPEC);
  if (at === undefined) return;
  Attrs.each(m.buf, at, at + a.size(IFLA_AF_SPEC), (type, off, len) => {
    if (type !== IFLA_BRIDGE_VLAN_INFO || len < 4) return;
    const flags = m.buf.readUInt16LE(off);
    out.push({
      ifindex,
      vid: m.buf.readUInt16LE(off + 2),
      pvid: (flags & BRIDGE_VLAN_INFO_PVID) !== 0,
      untagged: (flags & BRIDGE_VLAN_INFO_UNTAGGED) !== 0,
    });
  });
}
