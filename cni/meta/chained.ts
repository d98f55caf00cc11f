// What every chained (meta) plugin reads from the main plugin's result: the container's
// addresses and the host-side interfaces. A meta plugin creates no interface; its ADD result
// is prevResult, passed through (possibly extended).
import { formatIp, parseIp } from "../address/address.ts";
import { CniError, ErrorCode, type Interface, type Request, type Result } from "../protocol/types.ts";

/** ADD and CHECK of a meta plugin need the main plugin's result (code 7 without it). */
export function requirePrevResult(req: Request, plugin: string): Result {
  const prev = req.config.prevResult;
  if (!prev) {
    throw new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: ${plugin} is a chained plugin and needs "prevResult" (put it after a main plugin such as berth-bridge)`,
    );
  }
  return prev;
}

export interface ContainerAddress {
  family: 4 | 6;
  /** Canonical text, as nft prints it. */
  ip: string;
  cidr: string;
}

/**
 * The container's addresses: ips[] pointing at a sandbox interface (or at no interface, as
 * 0.x-converted results do), the first of each family first.
 */
export function containerAddresses(prev: Result): ContainerAddress[] {
  const ifs = prev.interfaces ?? [];
  const out: ContainerAddress[] = [];
  for (const ip of prev.ips ?? []) {
    if (ip.interface !== undefined && ifs[ip.interface] && !ifs[ip.interface]!.sandbox) continue;
    const parsed = parseIp(ip.address.split("/")[0]!);
    out.push({ family: parsed.family, ip: formatIp(parsed), cidr: ip.address });
  }
  return out;
}

/** Interfaces of the result that live on the host (no sandbox): the bridge, the host veth. */
export function hostInterfaces(prev: Result): Interface[] {
  return (prev.interfaces ?? []).filter((i) => !i.sandbox);
}
