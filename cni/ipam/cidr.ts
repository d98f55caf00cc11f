// Address arithmetic for IPAM: IPv4 and IPv6 addresses as bigints, subnets with strict
// validation, and the 16-byte key the lease store sorts by. Parsing is strict on purpose: a
// subnet with host bits set is a typo in a config, not something to silently mask.
import { type Family, isIPv4, isIPv6 } from "../spec/address.ts";

export type { Family };

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

/** Parses a bare IPv4 or IPv6 address (no prefix, no zone). */
export function parseIp(text: string): Ip {
  if (typeof text !== "string") throw new AddressError(`${JSON.stringify(text)} is not an IP address`);
  if (isIPv4(text)) return { family: 4, value: parseV4(text) };
  if (isIPv6(text)) return { family: 6, value: parseV6(text) };
  throw new AddressError(`${JSON.stringify(text)} is not an IP address`);
}

/** Like parseIp but returns null instead of throwing. */
export function tryParseIp(text: string): Ip | null {
  try {
    return parseIp(text);
  } catch {
    return null;
  }
}

function parseV4(text: string): bigint {
  let v = 0n;
  for (const part of text.split(".")) v = (v << 8n) | BigInt(Number(part));
  return v;
}

// Input already passed isIPv6, so only the shape (groups, "::", dotted tail) is handled here.
function parseV6(text: string): bigint {
  let body = text;
  const lastColon = body.lastIndexOf(":");
  const tail = body.slice(lastColon + 1);
  if (tail.includes(".")) {
    // A dotted IPv4 tail ("::ffff:10.1.2.3") is two 16-bit groups in disguise.
    const v4 = parseV4(tail);
    body = `${body.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const halves = body.split("::");
  const head = halves[0] === "" ? [] : halves[0]!.split(":");
  const rest = halves.length > 1 && halves[1] !== "" ? halves[1]!.split(":") : [];
  const groups = halves.length > 1 ? [...head, ...Array(8 - head.length - rest.length).fill("0"), ...rest] : head;
  let v = 0n;
  for (const g of groups) v = (v << 16n) | BigInt(Number.parseInt(g, 16));
  return v;
}

/** Canonical text: dotted quad, or RFC 5952 (lowercase, longest zero run compressed). */
export function formatIp(ip: Ip): string {
  if (ip.family === 4) return formatV4(ip.value);
  const v = ip.value;
  if (v >> 32n === 0xffffn) return `::ffff:${formatV4(v & 0xffffffffn)}`;
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 1; // RFC 5952: a single zero group is not compressed
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

function formatV4(v: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => Number((v >> s) & 0xffn)).join(".");
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
  if (!/^(0|[1-9][0-9]{0,2})$/.test(prefixText) || Number(prefixText) > max) {
    throw new AddressError(
      `${JSON.stringify(text)} has an invalid prefix length /${prefixText} (IPv${ip.family} allows 0 to ${max})`,
    );
  }
  return { ip, prefix: Number(prefixText) };
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

  /** The network of `prefix` bits that contains `ip` (host bits masked off). */
  static containing(ip: Ip, prefix: number): Subnet {
    const bits = BITS[ip.family];
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > bits) throw new AddressError(`invalid prefix length /${prefix}`);
    const hostMask = (1n << BigInt(bits - prefix)) - 1n;
    return new Subnet(ip.family, ip.value & ~hostMask, prefix);
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

  overlaps(other: Subnet): boolean {
    return other.family === this.family && other.network <= this.last && this.network <= other.last;
  }

  ip(value: bigint): Ip {
    return { family: this.family, value };
  }

  toString(): string {
    return `${formatIp({ family: this.family, value: this.network })}/${this.prefix}`;
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
