// MAC addresses berth chooses itself (udev's MACAddressPolicy rewrites the kernel's random ones).
import { randomBytes } from "../digest.ts";

/** A random unicast, locally administered MAC. */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");
}
