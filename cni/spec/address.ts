// Syntax checks for the address strings that appear in CNI configs and results. Only
// validation and family detection: arithmetic on addresses belongs to IPAM. Hand-written
// rather than node:net's isIP, because loading node:net costs a plugin process several ms.

export type Family = 4 | 6;

const OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
/** Dotted quad without leading zeros (which some parsers read as octal). */
const IPV4 = new RegExp(`^${OCTET}(\\.${OCTET}){3}$`);
const HEXTET = /^[0-9a-fA-F]{1,4}$/;

export function isIPv4(s: string): boolean {
  return IPV4.test(s);
}

/** RFC 4291 text form, "::" compression and a trailing dotted quad included; no zone id. */
export function isIPv6(s: string): boolean {
  const halves = s.split("::");
  if (halves.length > 2) return false;
  let groups = 0;
  for (let h = 0; h < halves.length; h++) {
    const half = halves[h]!;
    if (half === "") continue;
    const parts = half.split(":");
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      const lastOfAll = h === halves.length - 1 && i === parts.length - 1;
      if (lastOfAll && part.includes(".")) {
        if (!isIPv4(part)) return false;
        groups += 2;
      } else if (HEXTET.test(part)) {
        groups += 1;
      } else {
        return false;
      }
    }
  }
  return halves.length === 2 ? groups <= 7 : groups === 8;
}

/** The family of a bare IP address, or null when it is not one. */
export function ipFamily(ip: string): Family | null {
  if (isIPv4(ip)) return 4;
  if (isIPv6(ip)) return 6;
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
