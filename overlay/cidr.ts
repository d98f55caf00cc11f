// IP prefixes as BigInt arithmetic: parse, format, split a cluster network into host subnets.
// Only what the overlay needs; both families.
import { isIPv4, isIPv6 } from "node:net";
import { AddressError, formatIp as formatAddress, parseIp as parseAddress } from "../cni/ipam/cidr.ts";

export type Family = 4 | 6;

export interface Cidr {
  family: Family;
  /** Network address (host bits cleared). */
  address: bigint;
  prefixLength: number;
}

export class CidrError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CidrError";
  }
}

const BITS: Record<Family, number> = { 4: 32, 6: 128 };

export function ipFamily(ip: string): Family | null {
  if (isIPv4(ip)) return 4;
  if (isIPv6(ip)) return 6;
  return null;
}

/** A bare address as (family, value); the parsing is IPAM's (cni/ipam/cidr.ts), errors are CidrErrors. */
export function parseIp(ip: string): { family: Family; value: bigint } {
  try {
    return parseAddress(ip);
  } catch (e) {
    if (e instanceof AddressError) throw new CidrError(e.message);
    throw e;
  }
}

/** Canonical text (RFC 5952 for IPv6), as IPAM writes it. */
export function formatIp(family: Family, value: bigint): string {
  return formatAddress({ family, value });
}

/** Parses "10.244.0.0/16"; host bits must be zero unless `allowHostBits`. */
export function parseCidr(text: string, allowHostBits = false): Cidr {
  const slash = text.indexOf("/");
  if (slash < 0) throw new CidrError(`"${text}" is not a CIDR (expected address/length)`);
  const ip = text.slice(0, slash);
  const lenText = text.slice(slash + 1);
  const family = ipFamily(ip);
  if (!family) throw new CidrError(`"${text}" is not a CIDR: "${ip}" is not an IP address`);
  const prefixLength = Number(lenText);
  if (!/^\d{1,3}$/.test(lenText) || prefixLength > BITS[family]) {
    throw new CidrError(`"${text}" is not a CIDR: prefix length must be 0-${BITS[family]}`);
  }
  const { value } = parseIp(ip);
  const address = value & networkMask(family, prefixLength);
  if (address !== value && !allowHostBits) {
    throw new CidrError(`"${text}" has host bits set (did you mean ${formatIp(family, address)}/${prefixLength}?)`);
  }
  return { family, address, prefixLength };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.family, c.address)}/${c.prefixLength}`;
}

function networkMask(family: Family, prefixLength: number): bigint {
  const bits = BigInt(BITS[family]);
  const all = (1n << bits) - 1n;
  return (all >> BigInt(prefixLength)) ^ all;
}

/** Number of /subnetLen subnets in `network`. */
export function subnetCount(network: Cidr, subnetLen: number): bigint {
  return 1n << BigInt(subnetLen - network.prefixLength);
}

/** The index-th /subnetLen subnet of `network`. */
export function subnetAt(network: Cidr, subnetLen: number, index: bigint): Cidr {
  const shift = BigInt(BITS[network.family] - subnetLen);
  return { family: network.family, address: network.address + (index << shift), prefixLength: subnetLen };
}

/** Index of `subnet` inside `network`, or null when it is not one of its /len subnets. */
export function subnetIndex(network: Cidr, subnet: Cidr): bigint | null {
  if (!cidrContains(network, subnet) || subnet.prefixLength < network.prefixLength) return null;
  return (subnet.address - network.address) >> BigInt(BITS[network.family] - subnet.prefixLength);
}

/** True when `inner` lies entirely inside `outer`. */
export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  if (outer.family !== inner.family || inner.prefixLength < outer.prefixLength) return false;
  return (inner.address & networkMask(outer.family, outer.prefixLength)) === outer.address;
}

export function cidrEquals(a: Cidr, b: Cidr): boolean {
  return a.family === b.family && a.address === b.address && a.prefixLength === b.prefixLength;
}

/** The network address of the subnet as a host address string (flannel's VTEP address). */
export function networkAddress(c: Cidr): string {
  return formatIp(c.family, c.address);
}
