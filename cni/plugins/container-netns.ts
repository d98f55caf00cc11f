// The container netns (CNI_NETNS) as ADD/CHECK need it and as DEL must survive without it,
// and an rtnetlink socket in a netns for the length of one piece of work.
import { type NetlinkScheduling, Rtnl } from "../../native/netlink/socket.ts";
import { Netns, NetnsError } from "../../native/netns.ts";
import { CniError, ErrorCode, type Request } from "../protocol/types.ts";

/** Opens CNI_NETNS for ADD/CHECK; a missing or bogus path is a clear CNI error. */
export function openContainerNetns(req: Request): Netns {
  try {
    return Netns.open(req.netns);
  } catch (e) {
    if (e instanceof NetnsError) throw new CniError(ErrorCode.InvalidEnvironment, `CNI_NETNS: ${e.message}`);
    throw e;
  }
}

/** For DEL: the container netns, or null when it is absent or already gone. */
export function openNetnsIfPresent(req: Request): Netns | null {
  if (!req.netns) return null;
  try {
    return Netns.open(req.netns);
  } catch (e) {
    if (e instanceof NetnsError) return null;
    throw e;
  }
}

/** Runs fn with an rtnetlink socket in ns, scheduled as `scheduling` says (the invocation's req.host); closes both. */
export function withRtnl<T>(ns: Netns | undefined, fn: (nl: Rtnl) => T | Promise<T>): Promise<T>;
export function withRtnl<T>(ns: Netns | undefined, scheduling: NetlinkScheduling, fn: (nl: Rtnl) => T | Promise<T>): Promise<T>;
export async function withRtnl<T>(
  ns: Netns | undefined,
  ...args: [(nl: Rtnl) => T | Promise<T>] | [NetlinkScheduling, (nl: Rtnl) => T | Promise<T>]
): Promise<T> {
  const [scheduling, fn] = args.length === 1 ? [undefined, args[0]] : args;
  const nl = Rtnl.open(ns, scheduling);
  try {
    return await fn(nl);
  } finally {
    nl.close();
  }
}
