// berth's one address module: IPv4 and IPv6 addresses as (family, bigint), subnets, the lease
// store's sort key, and the string helpers the plugins use on CNI's "address/prefix" text.
// IPv6 parsing and RFC 5952 formatting are the ip-address package's. A dotted quad is read
// and written here: it is one regular expression, and it keeps the package out of the start-up
// of a plugin that meets only IPv4 (see ip-address.cjs). On top of the package berth is
// stricter: a bare address carries no prefix and no zone id (ip-address takes both inside the
// text), an IPv4 octet has no leading zero (which some parsers read as octal), and an
// IPv4-mapped IPv6 address is written dotted (::ffff:10.0.0.1), as inet_ntop and iproute2
// print it. Subnets are strict too: a subnet with host bits set is a typo in a config, not
// something to silently mask.
import { ipAddress } from "./ip-address.cjs";

export type Family = 4 | 6;

/** Thrown for malformed addresses and subnets; callers add which config key held the value. */
export class AddressError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = "AddressError";
  }
}

export interface Ip {
  family: Family;
  value: bigint;
}

const BITS: Record<Family, number> = { 4: 32, 6: 128 };
const V4_MAPPED_PREFIX = 0xffffn << 32n;
const PREFIX_LENGTH = /^(0|[1-9][0-9]{0,2})$/;

const OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const IPV4 = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

/** Parses a bare IPv4 or IPv6 address (no prefix, no zone), or returns null. */
export function tryParseIp(text: unknown): Ip | null {
  if (typeof text !== "string") return null;
  const v4 = IPV4.exec(text);
  if (v4) return { family: 4, value: BigInt(((+v4[1]! << 24) | (+v4[2]! << 16) | (+v4[3]! << 8) | +v4[4]!) >>> 0) };
  if (!text.includes(":") || text.includes("/") || text.includes("%")) return null;
  try {
    return { family: 6, value: new (ipAddress().Address6)(text).bigInt() };
  } catch {
    return null;
  }
}

/** Parses a bare IPv4 or IPv6 address (no prefix, no zone). */
export function parseIp(text: string): Ip {
  const ip = tryParseIp(text);
  if (ip === null) throw new AddressError(`${JSON.stringify(text)} is not an IP address`);
  return ip;
}

/** A dotted quad without leading zeros (which some parsers read as octal). */
export function isIPv4(s: string): boolean {
  return typeof s === "string" && IPV4.test(s);
}

/** RFC 4291 text form, "::" compression and a trailing dotted quad included; no zone id. */
export function isIPv6(s: string): boolean {
  return tryParseIp(s)?.family === 6;
}

/** The family of a bare IP address, or null when it is not one. */
export function ipFamily(ip: string): Family | null {
  return tryParseIp(ip)?.family ?? null;
}

/** Canonical text: dotted quad, or RFC 5952 (lowercase, longest zero run compressed). */
export function formatIp(ip: Ip): string {
  if (ip.family === 4) return formatV4(ip.value);
  if (ip.value >> 32n === 0xffffn) return `::ffff:${formatV4(ip.value & 0xffffffffn)}`;
  return ipAddress().Address6.fromBigInt(ip.value).correctForm();
}

function formatV4(value: bigint): string {
  const v = Number(value);
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** An address with a prefix length, host bits allowed (an interface address such as 10.1.0.5/24). */
export interface IpPrefix {
  ip: Ip;
  prefix: number;
}

export function parseIpPrefix(text: string): IpPrefix {
  if (typeof text !== "string") throw new AddressError(`${JSON.stringify(text)} is not an address in CIDR notation`);
  const slash = text.indexOf("/");
  if (slash < 0) throw new AddressError(`${JSON.stringify(text)} has no prefix length (expected CIDR like 10.1.0.0/24)`);
  const ip = parseIp(text.slice(0, slash));
  const prefixText = text.slice(slash + 1);
  const max = BITS[ip.family];
  if (!PREFIX_LENGTH.test(prefixText) || Number(prefixText) > max) {
    throw new AddressError(
      `${JSON.stringify(text)} has an invalid prefix length /${prefixText} (IPv${ip.family} allows 0 to ${max})`,
    );
  }
  return { ip, prefix: Number(prefixText) };
}

/** The family of "address/prefix" with a prefix in range for that family, or null. */
export function cidrFamily(cidr: string): Family | null {
  try {
    return parseIpPrefix(cidr).ip.family;
  } catch {
    return null;
  }
}

/** A network: the address with all host bits zero, and its prefix length. */
export class Subnet {
  private constructor(
    readonly family: Family,
    readonly network: bigint,
    readonly prefix: number,
  ) {}

  /** Strict: "10.1.0.5/24" is an error that names the network it probably meant. */
  static parse(text: string): Subnet {
    const { ip, prefix } = parseIpPrefix(text);
    const subnet = Subnet.containing(ip, prefix);
    if (subnet.network !== ip.value) {
      throw new AddressError(`${JSON.stringify(text)} has host bits set (the network is ${subnet.toString()})`);
    }
    return subnet;
  }

  /** "10.1.0.5/24" read as the network 10.1.0.0/24 (host bits cleared). */
  static parseMasked(text: string): Subnet {
    const { ip, prefix } = parseIpPrefix(text);
    return Subnet.containing(ip, prefix);
  }

  /** The network of `prefix` bits that contains `ip` (host bits masked off). */
  static containing(ip: Ip, prefix: number): Subnet {
    const bits = BITS[ip.family];
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > bits) throw new AddressError(`invalid prefix length /${prefix}`);
    const hostMask = (1n << BigInt(bits - prefix)) - 1n;
    return new Subnet(ip.family, ip.value & ~hostMask, prefix);
  }

  /** The single-address network of `ip` (/32 or /128). */
  static host(ip: Ip): Subnet {
    return new Subnet(ip.family, ip.value, BITS[ip.family]);
  }

  get size(): bigint {
    return 1n << BigInt(BITS[this.family] - this.prefix);
  }

  /** The last address (the IPv4 broadcast address). */
  get last(): bigint {
    return this.network + this.size - 1n;
  }

  contains(ip: Ip): boolean {
    return ip.family === this.family && ip.value >= this.network && ip.value <= this.last;
  }

  /** True when `inner` lies entirely inside this subnet. */
  includes(inner: Subnet): boolean {
    return inner.family === this.family && inner.prefix >= this.prefix && this.contains(inner.ip(inner.network));
  }

  overlaps(other: Subnet): boolean {
    return other.family === this.family && other.network <= this.last && this.network <= other.last;
  }

  equals(other: Subnet | undefined): boolean {
    return other !== undefined && other.family === this.family && other.network === this.network && other.prefix === this.prefix;
  }

  ip(value: bigint): Ip {
    return { family: this.family, value };
  }

  /** The n-th address as text: nth(0n) is the network address, nth(1n) the first host. */
  nth(n: bigint): string {
    return formatIp(this.ip(this.network + n));
  }

  /** How many /`prefix` subnets this one splits into. */
  subnetCount(prefix: number): bigint {
    return 1n << BigInt(prefix - this.prefix);
  }

  /** The index-th /`prefix` subnet of this one. */
  subnetAt(prefix: number, index: bigint): Subnet {
    return new Subnet(this.family, this.network + (index << BigInt(BITS[this.family] - prefix)), prefix);
  }

  /** Index of `inner` among this subnet's /inner.prefix subnets, or null when it is not inside. */
  subnetIndex(inner: Subnet): bigint | null {
    if (!this.includes(inner)) return null;
    return (inner.network - this.network) >> BigInt(BITS[this.family] - inner.prefix);
  }

  toString(): string {
    return `${formatIp(this.ip(this.network))}/${this.prefix}`;
  }
}

/**
 * The 16-byte big-endian sort key of an address: IPv6 as is, IPv4 as its v4-mapped IPv6
 * form (::ffff:a.b.c.d). Byte order equals numeric order, so SQLite range queries on the
 * key walk addresses in order, and one key space covers both families.
 */
export function addressKey(ip: Ip): Buffer {
  return keyFromValue(keyValue(ip));
}

/** The address key as a 128-bit number (the v4-mapped value for IPv4). */
export function keyValue(ip: Ip): bigint {
  return ip.family === 4 ? V4_MAPPED_PREFIX | ip.value : ip.value;
}

export function keyFromValue(v: bigint): Buffer {
  const key = Buffer.alloc(16);
  key.writeBigUInt64BE(v >> 64n, 0);
  key.writeBigUInt64BE(v & 0xffffffffffffffffn, 8);
  return key;
}

export function valueFromKey(key: Buffer): bigint {
  return (key.readBigUInt64BE(0) << 64n) | key.readBigUInt64BE(8);
}

// Helpers on CNI's address text, whose syntax the spec layer has already checked.

/** The family of an address or CIDR string already known to be valid. */
export function familyOf(cidrOrIp: string): Family {
  return cidrOrIp.includes(":") ? 6 : 4;
}

/** "10.1.0.5/24" → "10.1.0.5". */
export function ipOf(cidr: string): string {
  return cidr.split("/")[0]!;
}

/** "10.1.0.5/24" → "10.1.0.0/24" (v4 and v6). */
export function subnetOf(cidr: string): string {
  return Subnet.parseMasked(cidr).toString();
}

/** First host address of a subnet (network + 1): the conventional gateway. */
export function firstHost(cidr: string): string {
  return Subnet.parseMasked(cidr).nth(1n);
}

/** Canonical text of a CIDR as the kernel reports it (IPv6 compressed, lowercase). */
export function normalizeCidr(cidr: string): string {
  if (cidr === "default") return cidr;
  const { ip, prefix } = parseIpPrefix(cidr);
  return `${formatIp(ip)}/${prefix}`;
}

const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** A colon-separated 6-byte hardware address. */
export function isMac(s: string): boolean {
  return MAC.test(s);
}
