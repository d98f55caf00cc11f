// Neighbours (RTM_*NEIGH): ARP/NDP entries (AF_INET/AF_INET6) and bridge/VXLAN forwarding
// database entries (AF_BRIDGE), encoded from specs and decoded into Neigh / FdbEntry.
import { Attrs, InvalidValueError, ipToBytes, type MessageView, type MessageWriter } from "./codec.ts";
import { AF_BRIDGE, AF_INET, AF_INET6, type Family, familyOf } from "./constants.ts";

export const NDMSG_LEN = 12;

const NDA_DST = 1;
const NDA_LLADDR = 2;
const NDA_VLAN = 5;
const NDA_PORT = 6;
const NDA_VNI = 7;
const NDA_IFINDEX = 8;
const NDA_MASTER = 9;
const NDA_SRC_VNI = 11;

export const NTF_USE = 0x01;
export const NTF_SELF = 0x02;
export const NTF_MASTER = 0x04;
export const NTF_PROXY = 0x08;
export const NTF_EXT_LEARNED = 0x10;
export const NTF_ROUTER = 0x80;

export type NeighState = "incomplete" | "reachable" | "stale" | "delay" | "probe" | "failed" | "noarp" | "permanent" | "none";
const STATES: Record<NeighState, number> = {
  none: 0,
  incomplete: 0x01,
  reachable: 0x02,
  stale: 0x04,
  delay: 0x08,
  probe: 0x10,
  failed: 0x20,
  noarp: 0x40,
  permanent: 0x80,
};

function stateNumber(s: NeighState | number): number {
  if (typeof s === "number") return s;
  const n = STATES[s];
  if (n === undefined) throw new InvalidValueError(`unknown neighbour state "${s}"`);
  return n;
}

/** State bits as names (an entry can be e.g. noarp+permanent in theory; usually one). */
export function stateNames(state: number): NeighState[] {
  if (state === 0) return ["none"];
  const out: NeighState[] = [];
  for (const [k, v] of Object.entries(STATES)) if (v && state & v) out.push(k as NeighState);
  return out;
}

export interface NeighSpec {
  /** Device (index, or name resolved by Rtnl). */
  dev: number | string;
  /** IP address of the neighbour. */
  dst: string;
  lladdr?: string;
  /** Default "permanent". */
  state?: NeighState | number;
  router?: boolean;
}

export interface Neigh {
  ifindex: number;
  family: Family;
  dst: string;
  lladdr?: string;
  state: number;
  states: NeighState[];
  flags: number;
  router: boolean;
}

export interface FdbSpec {
  /** Bridge port or VXLAN device. */
  dev: number | string;
  mac: string;
  /** Remote VTEP IP (VXLAN). */
  dst?: string;
  vlan?: number;
  vni?: number;
  /** Remote UDP port (VXLAN). */
  port?: number;
  /** Underlay ifindex to reach `dst` through (VXLAN). */
  via?: number;
  /** The device's own table (VXLAN, or a port's hardware FDB). Default when `master` is unset. */
  self?: boolean;
  /** The master bridge's table. */
  master?: boolean;
  /**
   * "permanent" (NUD_PERMANENT; the default with `self`; on a bridge it means a local address),
   * "static" (NUD_NOARP; the default with `master`), or "dynamic" (ages out).
   */
  state?: "permanent" | "static" | "dynamic";
}

export interface FdbEntry {
  ifindex: number;
  mac: string;
  dst?: string;
  vlan?: number;
  vni?: number;
  port?: number;
  via?: number;
  masterIndex?: number;
  state: number;
  flags: number;
  self: boolean;
  /** In the master bridge's table (NTF_MASTER, or NDA_MASTER in dumps). */
  master: boolean;
  permanent: boolean;
}

export interface NeighFilter {
  ifindex?: number;
  family?: Family;
}

function writeNdmsg(w: MessageWriter, family: number, ifindex: number, state: number, flags: number): void {
  const h = w.struct(NDMSG_LEN);
  w.putU8(h, family);
  w.putI32(h + 4, ifindex);
  w.putU16(h + 8, state);
  w.putU8(h + 10, flags);
}

export function encodeNeigh(w: MessageWriter, ifindex: number, spec: NeighSpec, forDelete: boolean): void {
  const dst = ipToBytes(spec.dst);
  writeNdmsg(
    w,
    dst.length === 4 ? AF_INET : AF_INET6,
    ifindex,
    forDelete ? 0 : stateNumber(spec.state ?? "permanent"),
    spec.router ? NTF_ROUTER : 0,
  );
  w.bytes(NDA_DST, dst);
  if (!forDelete && spec.lladdr !== undefined) w.mac(NDA_LLADDR, spec.lladdr);
}

export function encodeFdb(w: MessageWriter, ifindex: number, spec: FdbSpec): void {
  let flags = 0;
  if (spec.self) flags |= NTF_SELF;
  if (spec.master) flags |= NTF_MASTER;
  if (!flags) flags = NTF_SELF; // as `bridge fdb`
  const state = spec.state ?? (flags & NTF_MASTER && !(flags & NTF_SELF) ? "static" : "permanent");
  const stateBits = state === "permanent" ? STATES.permanent : state === "static" ? STATES.noarp : STATES.reachable;
  writeNdmsg(w, AF_BRIDGE, ifindex, stateBits, flags);
  w.mac(NDA_LLADDR, spec.mac);
  if (spec.dst !== undefined) w.ip(NDA_DST, spec.dst);
  if (spec.vlan !== undefined) {
    if (!Number.isInteger(spec.vlan) || spec.vlan < 1 || spec.vlan > 4094) {
      throw new InvalidValueError(`VLAN id must be 1..4094, got ${spec.vlan}`);
    }
    w.u16(NDA_VLAN, spec.vlan);
  }
  if (spec.vni !== undefined) w.u32(NDA_VNI, spec.vni);
  if (spec.port !== undefined) w.be16(NDA_PORT, spec.port);
  if (spec.via !== undefined) w.u32(NDA_IFINDEX, spec.via);
}

/** Family header for a neighbour or FDB dump. */
export function encodeNeighDump(w: MessageWriter, family: number): void {
  writeNdmsg(w, family, 0, 0, 0);
}

export function decodeNeigh(m: MessageView): Neigh | undefined {
  const { buf, payload } = m;
  const family = familyOf(buf[payload] as number);
  if (family === undefined) return undefined;
  const a = new Attrs(buf, payload + NDMSG_LEN, m.end);
  const state = buf.readUInt16LE(payload + 8);
  const flags = buf[payload + 10] as number;
  const n: Neigh = {
    ifindex: buf.readInt32LE(payload + 4),
    family,
    dst: a.ip(NDA_DST) ?? "",
    state,
    states: stateNames(state),
    flags,
    router: (flags & NTF_ROUTER) !== 0,
  };
  const ll = a.mac(NDA_LLADDR);
  if (ll !== undefined) n.lladdr = ll;
  return n;
}

export function decodeFdb(m: MessageView): FdbEntry | undefined {
  const { buf, payload } = m;
  if (buf[payload] !== AF_BRIDGE) return undefined;
  const a = new Attrs(buf, payload + NDMSG_LEN, m.end);
  const state = buf.readUInt16LE(payload + 8);
  const flags = buf[payload + 10] as number;
  const e: FdbEntry = {
    ifindex: buf.readInt32LE(payload + 4),
    mac: a.mac(NDA_LLADDR) ?? "",
    state,
    flags,
    self: (flags & NTF_SELF) !== 0,
    master: (flags & NTF_MASTER) !== 0,
    permanent: (state & STATES.permanent) !== 0,
  };
  const dst = a.ip(NDA_DST);
  if (dst !== undefined) e.dst = dst;
  const vlan = a.u16(NDA_VLAN);
  if (vlan !== undefined) e.vlan = vlan;
  const vni = a.u32(NDA_VNI) ?? a.u32(NDA_SRC_VNI);
  if (vni !== undefined) e.vni = vni;
  const port = a.be16(NDA_PORT);
  if (port !== undefined) e.port = port;
  // Dumps of a bridge's own table carry NDA_MASTER rather than NTF_MASTER.
  const master = a.u32(NDA_MASTER);
  if (master !== undefined) {
    e.masterIndex = master;
    e.master = true;
  }
  const via = a.u32(NDA_IFINDEX);
  if (via !== undefined) e.via = via;
  return e;
}
