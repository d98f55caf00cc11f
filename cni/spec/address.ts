// Syntax checks for the address strings that appear in CNI configs and results. Only
// validation and family detection: arithmetic on addresses belongs to IPAM.
import { isIPv4, isIPv6 } from "node:net";

export type Family = 4 | 6;

/** The family of a bare IP address, or null when it is not one. */
export function ipFamily(ip: string): Family | null {
  if (isIPv4(ip)) return 4;
  // Zone ids ("fe80::1%eth0") are not addresses a config or result may carry.
  if (isIPv6(ip) && !ip.includes("%")) return 6;
  return null;
}

/** The family of "address/prefix" with a prefix in range for that family, or null. */
export function cidrFamily(cidr: string): Family | null {
  const slash = cidr.indexOf("/");
  if (slash < 0) return null;
  const family = ipFamily(cidr.slice(0, slash));
  const prefix = cidr.slice(slash + 1);
  if (family === null || !/^(0|[1-9][0-9]{0,2})$/.test(prefix)) return null;
  return Number(prefix) <= (family === 4 ? 32 : 128) ? family : null;
}

const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

export function isMac(s: string): boolean {
  return MAC.test(s);
}
