// Addresses (RTM_*ADDR): AddrSpec to add/delete, Addr decoded from the kernel.
import { Attrs, InvalidValueError, type MessageView, type MessageWriter, parseCidr } from "./codec.ts";
import { afOf, type Family, familyOf } from "./constants.ts";

export const IFADDRMSG_LEN = 8;

const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_LABEL = 3;
const IFA_BROADCAST = 4;
const IFA_CACHEINFO = 6;
const IFA_FLAGS = 8;

export const IFA_F_SECONDARY = 0x01;
export const IFA_F_NODAD = 0x02;
export const IFA_F_DADFAILED = 0x08;
export const IFA_F_TENTATIVE = 0x40;
export const IFA_F_PERMANENT = 0x80;
export const IFA_F_NOPREFIXROUTE = 0x200;

export type Scope = "universe" | "site" | "link" | "host" | "nowhere";
const SCOPES: Record<Scope, number> = { universe: 0, site: 200, link: 253, host: 254, nowhere: 255 };
const SCOPE_NAMES = new Map(Object.entries(SCOPES).map(([k, v]) => [v, k as Scope]));

export function scopeNumber(s: Scope | number): number {
  if (typeof s === "number") return s;
  const n = SCOPES[s];
  if (n === undefined) throw new InvalidValueError(`unknown scope "${s}"`);
  return n;
}

export function scopeName(n: number): Scope | number {
  return SCOPE_NAMES.get(n) ?? n;
}

export interface AddrSpec {
  /** "10.1.2.3/24" or "fd00::1/64". */
  cidr: string;
  /** Skip duplicate address detection (IPv6): usable at once. */
  nodad?: boolean;
  /** Do not install the prefix route for the subnet. */
  noprefixroute?: boolean;
  scope?: Scope | number;
  /** IPv4 broadcast address; "auto" computes it from the prefix. */
  broadcast?: string | "auto";
  label?: string;
  /** Peer address for point-to-point links (the CIDR's address becomes IFA_LOCAL). */
  peer?: string;
}

export interface Addr {
  ifindex: number;
  family: Family;
  address: string;
  prefixLength: number;
  /** address/prefixLength. */
  cidr: string;
  /** Peer (IFA_ADDRESS) on point-to-point addresses, when it differs from the local one. */
  peer?: string;
  broadcast?: string;
  label?: string;
  scope: Scope | number;
  flags: number;
  tentative: boolean;
  dadFailed: boolean;
  permanent: boolean;
  /** Seconds; 0xffffffff means forever. */
  validLifetime?: number;
  preferredLifetime?: number;
}

export interface AddrFilter {
  ifindex?: number;
  family?: Family;
}

function broadcastOf(bytes: Buffer, prefixLength: number): string {
  const host = prefixLength >= 32 ? 0 : 0xffffffff >>> prefixLength;
  const v = (bytes.readUInt32BE(0) | host) >>> 0;
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** Encodes the body of RTM_NEWADDR / RTM_DELADDR. */
export function encodeAddr(w: MessageWriter, ifindex: number, spec: AddrSpec, forDelete: boolean): Family {
  const c = parseCidr(spec.cidr);
  const h = w.struct(IFADDRMSG_LEN);
  w.putU8(h, afOf(c.family));
  w.putU8(h + 1, c.prefixLength);
  w.putU8(h + 3, spec.scope === undefined ? 0 : scopeNumber(spec.scope));
  w.putU32(h + 4, ifindex);
  w.bytes(IFA_LOCAL, c.bytes);
  if (spec.peer !== undefined) {
    const peer = parseCidr(spec.peer);
    if (peer.family !== c.family) throw new InvalidValueError(`peer ${spec.peer} is not the same family as ${spec.cidr}`);
    w.bytes(IFA_ADDRESS, peer.bytes);
  } else {
    w.bytes(IFA_ADDRESS, c.bytes);
  }
  if (forDelete) return c.family;
  let flags = 0;
  if (spec.nodad) flags |= IFA_F_NODAD;
  if (spec.noprefixroute) flags |= IFA_F_NOPREFIXROUTE;
  if (flags) w.u32(IFA_FLAGS, flags);
  if (spec.broadcast !== undefined) {
    if (c.family !== 4) throw new InvalidValueError(`broadcast applies to IPv4 only (${spec.cidr})`);
    w.ip(IFA_BROADCAST, spec.broadcast === "auto" ? broadcastOf(c.bytes, c.prefixLength) : spec.broadcast);
  }
  if (spec.label !== undefined) w.string(IFA_LABEL, spec.label);
  return c.family;
}

export function decodeAddr(m: MessageView): Addr | undefined {
  const { buf, payload } = m;
  const family = familyOf(buf[payload] as number);
  if (family === undefined) return undefined;
  const prefixLength = buf[payload + 1] as number;
  const a = new Attrs(buf, payload + IFADDRMSG_LEN, m.end);
  const local = a.ip(IFA_LOCAL);
  const address = a.ip(IFA_ADDRESS);
  const addr0 = local ?? address ?? "";
  // IFA_FLAGS (u32) supersedes the 8-bit ifa_flags when present.
  const flags = a.u32(IFA_FLAGS) ?? (buf[payload + 2] as number);
  const out: Addr = {
    ifindex: buf.readUInt32LE(payload + 4),
    family,
    address: addr0,
    prefixLength,
    cidr: `${addr0}/${prefixLength}`,
    scope: scopeName(buf[payload + 3] as number),
    flags,
    tentative: (flags & IFA_F_TENTATIVE) !== 0,
    dadFailed: (flags & IFA_F_DADFAILED) !== 0,
    permanent: (flags & IFA_F_PERMANENT) !== 0,
  };
  if (local !== undefined && address !== undefined && local !== address) out.peer = address;
  const brd = a.ip(IFA_BROADCAST);
  if (brd !== undefined) out.broadcast = brd;
  const label = a.string(IFA_LABEL);
  if (label !== undefined) out.label = label;
  const ci = a.offset(IFA_CACHEINFO);
  if (ci !== undefined && a.size(IFA_CACHEINFO) >= 8) {
    out.preferredLifetime = buf.readUInt32LE(ci);
    out.validLifetime = buf.readUInt32LE(ci + 4);
  }
  return out;
}
