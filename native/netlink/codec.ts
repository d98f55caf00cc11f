// Netlink wire format: message headers, attributes (TLVs, 4-byte aligned, nestable),
// typed value helpers (IPv4/IPv6, MAC) and NLMSG_ERROR decoding with extended ack.
// Netlink is host-endian; berth runs on little-endian machines (x86_64, arm64).
// Checked on the typed arrays themselves, not with node:os, whose first load costs a cold plugin
// start ~0.3 ms.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("berth netlink codec supports little-endian hosts only");
}

export const NLMSG_HDRLEN = 16;
export const NLA_HDRLEN = 4;
export const NLA_F_NESTED = 0x8000;
export const NLA_F_NET_BYTEORDER = 0x4000;
const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;

export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_ECHO = 0x8;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_APPEND = 0x800;
/** In an NLMSG_ERROR: the echoed request was capped to its header (NETLINK_CAP_ACK). */
export const NLM_F_CAPPED = 0x100;
/** In an NLMSG_ERROR: extended-ack TLVs follow the echoed request. */
export const NLM_F_ACK_TLVS = 0x200;

export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;
export const NLMSGERR_ATTR_MISS_TYPE = 5;
export const NLMSGERR_ATTR_MISS_NEST = 6;

export const align4 = (n: number): number => (n + 3) & ~3;

/** A value the caller passed that cannot be encoded (bad IP, MAC, prefix length...). */
export class InvalidValueError extends Error {
  readonly code = "EINVAL";
  constructor(message: string) {
    super(message);
    this.name = "InvalidValueError";
  }
}

// ---------------------------------------------------------------- addresses

/** Parses dotted-quad IPv4 into `out` at `off`; returns false when it is not one. */
function parseIpv4Into(s: string, out: Uint8Array, off: number): boolean {
  let part = 0;
  let digits = 0;
  let n = 0;
  for (let i = 0; i <= s.length; i++) {
    const c = i < s.length ? s.charCodeAt(i) : 46;
    if (c === 46) {
      if (digits === 0 || part > 3) return false;
      out[off + part++] = n;
      n = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      // No leading zeros: "010" is octal to some parsers and decimal to others.
      if (digits === 1 && n === 0) return false;
      n = n * 10 + (c - 48);
      if (n > 255 || ++digits > 3) return false;
    } else return false;
  }
  return part === 4;
}

function parseIpv6Into(s: string, out: Uint8Array, off: number): boolean {
  if (s.length < 2 || s.length > 45) return false;
  const words: number[] = [];
  let gap = -1;
  let i = 0;
  if (s.startsWith("::")) {
    gap = 0;
    i = 2;
    if (s.length === 2) {
      out.fill(0, off, off + 16);
      return true;
    }
  } else if (s.charCodeAt(0) === 58) return false;
  while (i < s.length) {
    // Embedded IPv4 tail (::ffff:1.2.3.4).
    const rest = s.slice(i);
    if (!rest.includes(":") && rest.includes(".")) {
      const v4 = new Uint8Array(4);
      if (!parseIpv4Into(rest, v4, 0)) return false;
      words.push(((v4[0] as number) << 8) | (v4[1] as number), ((v4[2] as number) << 8) | (v4[3] as number));
      i = s.length;
      break;
    }
    let n = 0;
    let digits = 0;
    while (i < s.length) {
      const c = s.charCodeAt(i);
      let v: number;
      if (c >= 48 && c <= 57) v = c - 48;
      else if (c >= 97 && c <= 102) v = c - 87;
      else if (c >= 65 && c <= 70) v = c - 55;
      else break;
      n = (n << 4) | v;
      if (++digits > 4) return false;
      i++;
    }
    if (digits === 0) return false;
    words.push(n);
    if (i === s.length) break;
    if (s.charCodeAt(i) !== 58) return false;
    i++;
    if (s.charCodeAt(i) === 58) {
      if (gap >= 0) return false;
      gap = words.length;
      i++;
      if (i === s.length) break;
    } else if (i === s.length) return false;
  }
  if (words.length > 8 || (gap < 0 && words.length !== 8) || (gap >= 0 && words.length > 7)) return false;
  // Words after the "::" gap shift right by the number of elided zero words.
  const zeros = 8 - words.length;
  out.fill(0, off, off + 16);
  for (let k = 0; k < words.length; k++) {
    const w = gap >= 0 && k >= gap ? k + zeros : k;
    out[off + w * 2] = (words[k] as number) >> 8;
    out[off + w * 2 + 1] = (words[k] as number) & 0xff;
  }
  return true;
}

export type IpFamily = 4 | 6;

/** Parses an IPv4 or IPv6 address into 4 or 16 bytes; throws InvalidValueError. */
export function ipToBytes(ip: string): Buffer {
  if (ip.includes(":")) {
    const b = Buffer.allocUnsafe(16);
    if (parseIpv6Into(ip, b, 0)) return b;
  } else {
    const b = Buffer.allocUnsafe(4);
    if (parseIpv4Into(ip, b, 0)) return b;
  }
  throw new InvalidValueError(`"${ip}" is not an IP address`);
}

export function ipFamily(ip: string): IpFamily {
  return ip.includes(":") ? 6 : 4;
}

/** Formats 4 or 16 bytes as an IP address (IPv6 in RFC 5952 canonical form). */
export function bytesToIp(b: Uint8Array, off = 0, len = b.length - off): string {
  if (len === 4) return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
  if (len !== 16) throw new InvalidValueError(`an IP address has 4 or 16 bytes, not ${len}`);
  // Longest run of zero words (length >= 2) becomes "::".
  let bestStart = -1;
  let bestLen = 0;
  let runStart = -1;
  for (let w = 0; w <= 8; w++) {
    const zero = w < 8 && b[off + w * 2] === 0 && b[off + w * 2 + 1] === 0;
    if (zero) {
      if (runStart < 0) runStart = w;
    } else if (runStart >= 0) {
      if (w - runStart > bestLen) {
        bestStart = runStart;
        bestLen = w - runStart;
      }
      runStart = -1;
    }
  }
  if (bestLen < 2) bestStart = -1;
  // IPv4-mapped addresses keep the dotted tail, as iproute2 prints them.
  if (bestStart === 0 && bestLen === 5 && b[off + 10] === 0xff && b[off + 11] === 0xff) {
    return `::ffff:${b[off + 12]}.${b[off + 13]}.${b[off + 14]}.${b[off + 15]}`;
  }
  let s = "";
  for (let w = 0; w < 8; w++) {
    if (w === bestStart) {
      s += "::";
      w += bestLen - 1;
      continue;
    }
    if (s.length > 0 && !s.endsWith(":")) s += ":";
    s += (((b[off + w * 2] as number) << 8) | (b[off + w * 2 + 1] as number)).toString(16);
  }
  return s;
}

export interface Cidr {
  family: IpFamily;
  /** The address as written (host bits kept: "10.1.2.3/24" keeps .3). */
  address: string;
  bytes: Buffer;
  prefixLength: number;
}

/** Parses "10.1.2.3/24" or "fd00::1/64"; a bare address gets /32 or /128. */
export function parseCidr(cidr: string): Cidr {
  const slash = cidr.indexOf("/");
  const address = slash < 0 ? cidr : cidr.slice(0, slash);
  const bytes = ipToBytes(address);
  const max = bytes.length * 8;
  let prefixLength = max;
  if (slash >= 0) {
    const p = cidr.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > max) throw new InvalidValueError(`"${cidr}": prefix length must be 0..${max}`);
    prefixLength = Number(p);
  }
  return { family: bytes.length === 4 ? 4 : 6, address, bytes, prefixLength };
}

/** Parses "aa:bb:cc:dd:ee:ff" (or any colon-separated hex bytes, e.g. 20-byte IPoIB). */
export function macToBytes(mac: string): Buffer {
  const parts = mac.split(":");
  const out = Buffer.allocUnsafe(parts.length);
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i] as string;
    if (p.length < 1 || p.length > 2 || !/^[0-9a-fA-F]+$/.test(p)) {
      throw new InvalidValueError(`"${mac}" is not a MAC address`);
    }
    out[i] = Number.parseInt(p, 16);
  }
  if (parts.length < 6) throw new InvalidValueError(`"${mac}" is not a MAC address`);
  return out;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

export function bytesToMac(b: Uint8Array, off = 0, len = b.length - off): string {
  let s = "";
  for (let i = 0; i < len; i++) s += (i ? ":" : "") + HEX[b[off + i] as number];
  return s;
}

// ---------------------------------------------------------------- encoding

/**
 * Builds one netlink message into a growable buffer. Reuse one writer per socket:
 * `begin()` rewinds it, `finish()` returns a view valid until the next `begin()`.
 */
export class MessageWriter {
  private buf: Buffer;
  private off = 0;

  constructor(initialSize = 1024) {
    this.buf = Buffer.alloc(initialSize);
  }

  private reserve(n: number): void {
    if (this.off + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.off + n));
    this.buf.copy(next, 0, 0, this.off);
    this.buf = next;
  }

  /** Starts a message: nlmsghdr with type and flags (length and seq are filled later). */
  begin(type: number, flags: number): this {
    this.off = 0;
    this.reserve(NLMSG_HDRLEN);
    this.buf.fill(0, 0, NLMSG_HDRLEN);
    this.buf.writeUInt16LE(type, 4);
    this.buf.writeUInt16LE(flags, 6);
    this.off = NLMSG_HDRLEN;
    return this;
  }

  /** Reserves `len` zeroed bytes (a family header such as ifinfomsg) and returns its offset. */
  struct(len: number): number {
    const at = this.off;
    const padded = align4(len);
    this.reserve(padded);
    this.buf.fill(0, at, at + padded);
    this.off += padded;
    return at;
  }

  putU8(at: number, v: number): this {
    this.buf[at] = v;
    return this;
  }
  putU16(at: number, v: number): this {
    this.buf.writeUInt16LE(v, at);
    return this;
  }
  putU32(at: number, v: number): this {
    this.buf.writeUInt32LE(v >>> 0, at);
    return this;
  }
  putI32(at: number, v: number): this {
    this.buf.writeInt32LE(v, at);
    return this;
  }

  private header(type: number, len: number): number {
    const total = NLA_HDRLEN + len;
    this.reserve(align4(total));
    this.buf.writeUInt16LE(total, this.off);
    this.buf.writeUInt16LE(type, this.off + 2);
    const data = this.off + NLA_HDRLEN;
    // Zero the padding so no stale bytes leak into the kernel's view.
    this.buf.fill(0, data + len, this.off + align4(total));
    this.off += align4(total);
    return data;
  }

  flag(type: number): this {
    this.header(type, 0);
    return this;
  }
  u8(type: number, v: number): this {
    const at = this.header(type, 1);
    this.buf[at] = v;
    return this;
  }
  u16(type: number, v: number): this {
    const at = this.header(type, 2);
    this.buf.writeUInt16LE(v, at);
    return this;
  }
  be16(type: number, v: number): this {
    const at = this.header(type, 2);
    this.buf.writeUInt16BE(v, at);
    return this;
  }
  u32(type: number, v: number): this {
    const at = this.header(type, 4);
    this.buf.writeUInt32LE(v >>> 0, at);
    return this;
  }
  i32(type: number, v: number): this {
    const at = this.header(type, 4);
    this.buf.writeInt32LE(v, at);
    return this;
  }
  u64(type: number, v: number | bigint): this {
    const at = this.header(type, 8);
    this.buf.writeBigUInt64LE(BigInt(v), at);
    return this;
  }
  /** NUL-terminated string. */
  string(type: number, s: string): this {
    const len = Buffer.byteLength(s);
    const at = this.header(type, len + 1);
    this.buf.write(s, at, len, "utf8");
    this.buf[at + len] = 0;
    return this;
  }
  bytes(type: number, b: Uint8Array): this {
    const at = this.header(type, b.length);
    this.buf.set(b, at);
    return this;
  }
  ip(type: number, ip: string): this {
    return this.bytes(type, ipToBytes(ip));
  }
  mac(type: number, mac: string): this {
    return this.bytes(type, macToBytes(mac));
  }

  /** Opens a nested attribute; close it with `end(token)`. */
  nest(type: number, nestedFlag = true): number {
    const at = this.off;
    this.reserve(NLA_HDRLEN);
    this.buf.writeUInt16LE(type | (nestedFlag ? NLA_F_NESTED : 0), at + 2);
    this.off += NLA_HDRLEN;
    return at;
  }
  end(token: number): this {
    this.buf.writeUInt16LE(this.off - token, token);
    return this;
  }

  /** Sets length and sequence number; returns a view on the internal buffer. */
  finish(seq: number): Buffer {
    this.buf.writeUInt32LE(this.off, 0);
    this.buf.writeUInt32LE(seq >>> 0, 8);
    return this.buf.subarray(0, this.off);
  }
}

// ---------------------------------------------------------------- decoding

export interface MessageView {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  /** Offset of the payload (after nlmsghdr) in `buf`. */
  payload: number;
  /** End of this message in `buf`. */
  end: number;
  buf: Buffer;
}

/** Calls `fn` for each message in a buffer of concatenated netlink messages. */
export function forEachMessage(buf: Buffer, fn: (m: MessageView) => void): void {
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) {
      throw new InvalidValueError(`truncated netlink message at offset ${off} (length ${len}, buffer ${buf.length})`);
    }
    fn({
      type: buf.readUInt16LE(off + 4),
      flags: buf.readUInt16LE(off + 6),
      seq: buf.readUInt32LE(off + 8),
      pid: buf.readUInt32LE(off + 12),
      payload: off + NLMSG_HDRLEN,
      end: off + len,
      buf,
    });
    off += align4(len);
  }
}

/**
 * The attributes of one message or nest, indexed by type (the last occurrence wins, as
 * in the kernel's nla_parse). No copies: accessors read straight from the buffer.
 */
export class Attrs {
  private readonly pos: number[] = [];
  private readonly len: number[] = [];

  constructor(
    readonly buf: Buffer,
    readonly start: number,
    readonly end: number,
  ) {
    let off = start;
    while (off + NLA_HDRLEN <= end) {
      const l = buf.readUInt16LE(off);
      if (l < NLA_HDRLEN || off + l > end) break;
      const t = buf.readUInt16LE(off + 2) & NLA_TYPE_MASK;
      this.pos[t] = off + NLA_HDRLEN;
      this.len[t] = l - NLA_HDRLEN;
      off += align4(l);
    }
  }

  has(t: number): boolean {
    return this.pos[t] !== undefined;
  }
  size(t: number): number {
    return this.len[t] ?? 0;
  }
  u8(t: number): number | undefined {
    const p = this.pos[t];
    return p === undefined || (this.len[t] as number) < 1 ? undefined : (this.buf[p] as number);
  }
  u16(t: number): number | undefined {
    const p = this.pos[t];
    return p === undefined || (this.len[t] as number) < 2 ? undefined : this.buf.readUInt16LE(p);
  }
  be16(t: number): number | undefined {
    const p = this.pos[t];
    return p === undefined || (this.len[t] as number) < 2 ? undefined : this.buf.readUInt16BE(p);
  }
  u32(t: number): number | undefined {
    const p = this.pos[t];
    return p === undefined || (this.len[t] as number) < 4 ? undefined : this.buf.readUInt32LE(p);
  }
  i32(t: number): number | undefined {
    const p = this.pos[t];
    return p === undefined || (this.len[t] as number) < 4 ? undefined : this.buf.readInt32LE(p);
  }
  /** u64 as a number (exact up to 2^53, plenty for counters and timers). */
  u64(t: number): number | undefined {
    const p = this.pos[t];
    if (p === undefined || (this.len[t] as number) < 8) return undefined;
    return this.buf.readUInt32LE(p) + this.buf.readUInt32LE(p + 4) * 0x1_0000_0000;
  }
  /** String attribute without its trailing NUL. */
  string(t: number): string | undefined {
    const p = this.pos[t];
    if (p === undefined) return undefined;
    let e = p + (this.len[t] as number);
    while (e > p && this.buf[e - 1] === 0) e--;
    return this.buf.toString("utf8", p, e);
  }
  /** A copy of the attribute's bytes. */
  bytes(t: number): Buffer | undefined {
    const p = this.pos[t];
    return p === undefined ? undefined : Buffer.from(this.buf.subarray(p, p + (this.len[t] as number)));
  }
  ip(t: number): string | undefined {
    const p = this.pos[t];
    const l = this.len[t];
    return p === undefined || (l !== 4 && l !== 16) ? undefined : bytesToIp(this.buf, p, l);
  }
  mac(t: number): string | undefined {
    const p = this.pos[t];
    return p === undefined || this.len[t] === 0 ? undefined : bytesToMac(this.buf, p, this.len[t]);
  }
  nested(t: number): Attrs | undefined {
    const p = this.pos[t];
    return p === undefined ? undefined : new Attrs(this.buf, p, p + (this.len[t] as number));
  }
  /** Offset of the attribute's payload, for fixed structs inside attributes. */
  offset(t: number): number | undefined {
    return this.pos[t];
  }

  /** Every attribute in order, including repeated types (e.g. IFLA_AF_SPEC vlan entries). */
  static each(buf: Buffer, start: number, end: number, fn: (type: number, off: number, len: number) => void): void {
    let off = start;
    while (off + NLA_HDRLEN <= end) {
      const l = buf.readUInt16LE(off);
      if (l < NLA_HDRLEN || off + l > end) break;
      fn(buf.readUInt16LE(off + 2) & NLA_TYPE_MASK, off + NLA_HDRLEN, l - NLA_HDRLEN);
      off += align4(l);
    }
  }
}

// ---------------------------------------------------------------- errors

export interface NetlinkAck {
  /** 0 for an ACK, otherwise a positive errno. */
  errno: number;
  /** Extended-ack text from the kernel (also present on some successful ACKs as a warning). */
  kernelMessage?: string;
  /** Offset in the request of the attribute the kernel blamed. */
  badAttrOffset?: number;
  /** Type of a missing required attribute. */
  missingType?: number;
}

/** Decodes the payload of an NLMSG_ERROR message (error code, capped request, ack TLVs). */
export function parseError(m: MessageView): NetlinkAck {
  const { buf, payload, end } = m;
  if (end - payload < 4) return { errno: 0 };
  const errno = -buf.readInt32LE(payload) | 0; // | 0: no -0 for an ACK
  const ack: NetlinkAck = { errno };
  if (!(m.flags & NLM_F_ACK_TLVS)) return ack;
  // The echoed request: only its header when capped, else the whole message.
  const echoed = payload + 4;
  if (echoed + NLMSG_HDRLEN > end) return ack;
  const echoedLen = m.flags & NLM_F_CAPPED ? NLMSG_HDRLEN : buf.readUInt32LE(echoed);
  const tlvs = echoed + align4(echoedLen);
  if (tlvs >= end) return ack;
  const a = new Attrs(buf, tlvs, end);
  const msg = a.string(NLMSGERR_ATTR_MSG);
  if (msg) ack.kernelMessage = msg;
  const offs = a.u32(NLMSGERR_ATTR_OFFS);
  if (offs !== undefined) ack.badAttrOffset = offs;
  const miss = a.u32(NLMSGERR_ATTR_MISS_TYPE);
  if (miss !== undefined) ack.missingType = miss;
  return ack;
}
