// Routes (RTM_*ROUTE): RouteSpec to add/replace/delete, Route decoded from the kernel.

import { type Scope, scopeName, scopeNumber } from "./address.ts";
import { Attrs, bytesToIp, InvalidValueError, ipToBytes, type MessageView, type MessageWriter, parseCidr } from "./codec.ts";
import { afOf, type Family, familyOf } from "./constants.ts";

export const RTMSG_LEN = 12;

const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_PRIORITY = 6;
const RTA_PREFSRC = 7;
const RTA_METRICS = 8;
const RTA_TABLE = 15;

const RTAX_MTU = 2;
const RTAX_ADVMSS = 8;

const RTNH_F_ONLINK = 4;
const RTM_F_CLONED = 0x200;

export const RT_TABLE_MAIN = 254;
export const RT_TABLE_LOCAL = 255;
const RT_TABLE_COMPAT = 252;

export type RouteType =
  | "unicast"
  | "local"
  | "broadcast"
  | "anycast"
  | "multicast"
  | "blackhole"
  | "unreachable"
  | "prohibit"
  | "throw";
const TYPES: RouteType[] = [
  "unicast",
  "local",
  "broadcast",
  "anycast",
  "multicast",
  "blackhole",
  "unreachable",
  "prohibit",
  "throw",
];

export type RouteProtocol = "unspec" | "redirect" | "kernel" | "boot" | "static" | "ra" | "dhcp";
const PROTOCOLS: Record<RouteProtocol, number> = { unspec: 0, redirect: 1, kernel: 2, boot: 3, static: 4, ra: 9, dhcp: 16 };
const PROTOCOL_NAMES = new Map(Object.entries(PROTOCOLS).map(([k, v]) => [v, k as RouteProtocol]));

export interface RouteSpec {
  /** "10.0.0.0/24", "fd00::/64" or "default" (with `family`, or the gateway's family). */
  dst: string;
  family?: Family;
  gateway?: string;
  /** Output device: index (the resolver turns names into indexes). */
  dev?: number | string;
  /** Use the gateway even though no connected route covers it. */
  onlink?: boolean;
  table?: number;
  /** Metric (RTA_PRIORITY). */
  priority?: number;
  scope?: Scope | number;
  protocol?: RouteProtocol | number;
  type?: RouteType;
  /** Preferred source address. */
  src?: string;
  mtu?: number;
  advmss?: number;
}

export interface Route {
  family: Family;
  /** CIDR, or "default". */
  dst: string;
  gateway?: string;
  ifindex?: number;
  table: number;
  priority?: number;
  scope: Scope | number;
  protocol: RouteProtocol | number;
  type: RouteType | number;
  onlink: boolean;
  src?: string;
  mtu?: number;
  advmss?: number;
}

export interface RouteFilter {
  /** Default: the main table; "all" for every table. */
  table?: number | "all";
  family?: Family;
  ifindex?: number;
}

interface ParsedDst {
  family: Family;
  bytes?: Buffer;
  prefixLength: number;
}

function parseDst(spec: RouteSpec): ParsedDst {
  if (spec.dst === "default") {
    const family = spec.family ?? (spec.gateway?.includes(":") ? 6 : 4);
    return { family, prefixLength: 0 };
  }
  const c = parseCidr(spec.dst);
  if (spec.family !== undefined && spec.family !== c.family) {
    throw new InvalidValueError(`route ${spec.dst} is not IPv${spec.family}`);
  }
  // The kernel rejects host bits set beyond the prefix ("Invalid prefix for given prefix length").
  return { family: c.family, bytes: c.bytes, prefixLength: c.prefixLength };
}

export function routeTitle(spec: RouteSpec): string {
  return `${spec.dst}${spec.gateway ? ` via ${spec.gateway}` : ""}${spec.dev !== undefined ? ` dev ${spec.dev}` : ""}`;
}

/** Encodes RTM_NEWROUTE / RTM_DELROUTE. `oif` is the resolved device index (0: none). */
export function encodeRoute(w: MessageWriter, spec: RouteSpec, oif: number, forDelete: boolean): void {
  const d = parseDst(spec);
  const type = spec.type ?? "unicast";
  const typeNum = TYPES.indexOf(type) + 1;
  if (typeNum === 0) throw new InvalidValueError(`unknown route type "${type}"`);
  const table = spec.table ?? RT_TABLE_MAIN;
  let scope: number;
  if (spec.scope !== undefined) scope = scopeNumber(spec.scope);
  else if (forDelete)
    scope = 255; // RT_SCOPE_NOWHERE matches any scope
  else if (type === "local") scope = 254;
  // As iproute2: an IPv4 unicast route without a gateway is on-link (scope link).
  else if (d.family === 4 && type === "unicast" && spec.gateway === undefined) scope = 253;
  else scope = 0;
  let protocol = 0;
  if (spec.protocol !== undefined) {
    protocol = typeof spec.protocol === "number" ? spec.protocol : (PROTOCOLS[spec.protocol] ?? -1);
    if (protocol < 0) throw new InvalidValueError(`unknown route protocol "${spec.protocol}"`);
  } else if (!forDelete) protocol = PROTOCOLS.boot;
  const h = w.struct(RTMSG_LEN);
  w.putU8(h, afOf(d.family));
  w.putU8(h + 1, d.prefixLength);
  w.putU8(h + 4, table < 256 ? table : RT_TABLE_COMPAT);
  w.putU8(h + 5, protocol);
  w.putU8(h + 6, scope);
  w.putU8(h + 7, forDelete && spec.type === undefined ? 0 : typeNum);
  w.putU32(h + 8, spec.onlink ? RTNH_F_ONLINK : 0);
  w.u32(RTA_TABLE, table);
  if (d.bytes) w.bytes(RTA_DST, d.bytes);
  if (spec.gateway !== undefined) {
    const gw = ipToBytes(spec.gateway);
    if (gw.length !== (d.family === 4 ? 4 : 16)) {
      throw new InvalidValueError(`gateway ${spec.gateway} is not the same family as ${spec.dst}`);
    }
    w.bytes(RTA_GATEWAY, gw);
  }
  if (oif) w.u32(RTA_OIF, oif);
  if (spec.priority !== undefined) w.u32(RTA_PRIORITY, spec.priority);
  if (spec.src !== undefined) w.ip(RTA_PREFSRC, spec.src);
  if (!forDelete && (spec.mtu !== undefined || spec.advmss !== undefined)) {
    const m = w.nest(RTA_METRICS);
    if (spec.mtu !== undefined) w.u32(RTAX_MTU, spec.mtu);
    if (spec.advmss !== undefined) w.u32(RTAX_ADVMSS, spec.advmss);
    w.end(m);
  }
}

/** Family header for a route dump. */
export function encodeRouteDump(w: MessageWriter, family: Family | undefined): void {
  const h = w.struct(RTMSG_LEN);
  w.putU8(h, family === undefined ? 0 : afOf(family));
}

export function decodeRoute(m: MessageView): Route | undefined {
  const { buf, payload } = m;
  const family = familyOf(buf[payload] as number);
  if (family === undefined) return undefined;
  const dstLen = buf[payload + 1] as number;
  const rtmFlags = buf.readUInt32LE(payload + 8);
  if (rtmFlags & RTM_F_CLONED) return undefined;
  const a = new Attrs(buf, payload + RTMSG_LEN, m.end);
  const dstAt = a.offset(RTA_DST);
  const dst = dstAt === undefined ? "default" : `${bytesToIp(buf, dstAt, a.size(RTA_DST))}/${dstLen}`;
  const typeNum = buf[payload + 7] as number;
  const protoNum = buf[payload + 5] as number;
  const r: Route = {
    family,
    dst: dstLen === 0 && dstAt === undefined ? "default" : dst,
    table: a.u32(RTA_TABLE) ?? (buf[payload + 4] as number),
    scope: scopeName(buf[payload + 6] as number),
    protocol: PROTOCOL_NAMES.get(protoNum) ?? protoNum,
    type: TYPES[typeNum - 1] ?? typeNum,
    onlink: (rtmFlags & RTNH_F_ONLINK) !== 0,
  };
  const gw = a.ip(RTA_GATEWAY);
  if (gw !== undefined) r.gateway = gw;
  const oif = a.u32(RTA_OIF);
  if (oif !== undefined) r.ifindex = oif;
  const prio = a.u32(RTA_PRIORITY);
  if (prio !== undefined) r.priority = prio;
  const src = a.ip(RTA_PREFSRC);
  if (src !== undefined) r.src = src;
  const metrics = a.nested(RTA_METRICS);
  if (metrics) {
    const mtu = metrics.u32(RTAX_MTU);
    if (mtu !== undefined) r.mtu = mtu;
    const advmss = metrics.u32(RTAX_ADVMSS);
    if (advmss !== undefined) r.advmss = advmss;
  }
  return r;
}

export function matchesRoute(r: Route, f: RouteFilter | undefined): boolean {
  const table = f?.table ?? RT_TABLE_MAIN;
  if (table !== "all" && r.table !== table) return false;
  if (f?.family !== undefined && r.family !== f.family) return false;
  if (f?.ifindex !== undefined && r.ifindex !== f.ifindex) return false;
  return true;
}
