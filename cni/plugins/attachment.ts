// What the main plugins share: deterministic host-side names, the undo stack of a
// half-done ADD, and the container netns handling that DEL must survive without.
import { isNetlinkError } from "../../native/netlink/error.ts";
import type { Link } from "../../native/netlink/link.ts";
import { type NetlinkScheduling, Rtnl } from "../../native/netlink/socket.ts";
import { Netns, NetnsError } from "../../native/netns.ts";
import { randomBytes, shortHash } from "../digest.ts";
import { type Attachment, CniError, ErrorCode, type LinkRetirer, type Request } from "../protocol/types.ts";

const hex = shortHash;

/**
 * Host-side link name of an attachment: `<prefix><network 4 hex><attachment 8 hex>` (14 bytes).
 * Deterministic, so DEL finds it without the netns and GC can tell a network's stale links
 * from live ones by name alone.
 */
export function hostLinkName(prefix: "bv" | "bp", network: string, containerId: string, ifname: string): string {
  return `${prefix}${networkTag(network)}${hex(`${containerId}/${ifname}`, 8)}`;
}

export function networkTag(network: string): string {
  return hex(network, 4);
}

/** Undo steps of a half-done ADD, run in reverse on failure; their own errors are logged away. */
export class Undo {
  private readonly steps: (() => unknown)[] = [];
  push(step: () => unknown): void {
    this.steps.push(step);
  }
  /**
   * Runs an ADD body and, when it fails, the undo steps right there — while the netlink
   * sockets the steps use are still open (withRtnl closes them on the way out) — then rethrows.
   */
  async guard<T>(body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (e) {
      await this.run();
      throw e;
    }
  }
  /** Runs the steps once, newest first; a second call finds nothing left to do. */
  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      try {
        await step();
      } catch {
        // best effort: the original error is what the runtime must see
      }
    }
  }
}

export interface Settled {
  /** The step's failure as a spec error, when it failed. */
  error?: CniError;
  /** Its spec code, when it failed with one (a kernel or store failure keeps its own code). */
  code?: number;
  /** Throws the failure, if any. */
  rethrow(): void;
}

/**
 * Runs a step whose failure must not stop the steps after it (DEL's IPAM release before the
 * link teardown, GC's IPAM collection before the links'): the failure is kept, as a CniError,
 * for the caller to report once the rest is done.
 */
export async function settle(step: () => Promise<unknown>): Promise<Settled> {
  try {
    await step();
    return { rethrow() {} };
  } catch (e) {
    const error = e instanceof CniError ? e : new CniError(ErrorCode.Internal, e instanceof Error ? e.message : String(e));
    return {
      error,
      code: error.code,
      rethrow() {
        throw error;
      },
    };
  }
}

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

/**
 * Removes a host-side link, or retires it through `retirer` (the invocation's host's, see
 * LinkRetirer); false when it was not there.
 */
export function retireLinkIfPresent(nl: Rtnl, name: string, retirer?: LinkRetirer): Promise<boolean> {
  return retirer ? retirer(nl, name) : deleteLinkIfPresent(nl, name);
}

/** Deletes a link, treating "already gone" as success. */
export async function deleteLinkIfPresent(nl: Rtnl, name: string): Promise<boolean> {
  try {
    await nl.linkDelAsync(name);
    return true;
  } catch (e) {
    if (isNetlinkError(e, "ENODEV") || isNetlinkError(e, "ENOENT")) return false;
    throw e;
  }
}

/** berth-specific code (the spec leaves ≥100 to plugins): a bridge cannot take another port. */
export const BRIDGE_FULL = 110;

/** Kernel failures during ADD/DEL: the kernel's words plus what we were doing. */
export function kernelError(what: string, e: unknown): CniError {
  if (e instanceof CniError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  if (isNetlinkError(e, "EXFULL")) {
    return new CniError(BRIDGE_FULL, `${what}: the bridge has reached the kernel's limit of 1023 ports (${msg})`);
  }
  return new CniError(ErrorCode.Internal, `${what}: ${msg}`);
}

/** Prefix of a link taken out of service, awaiting its delete in the background. */
export const RETIRED_PREFIX = "bz";

/**
 * The alias a retired host link carries: its name in service. A retired link outlives a
 * process that dies before its background delete; by this alias a later DEL of the same
 * attachment, or GC of its network, still finds it.
 */
export function retiredAlias(name: string): string {
  return `berth-retired:${name}`;
}

/** The in-service name a retired link carried, or undefined when `l` is not a retired link. */
function retiredFrom(l: Link): string | undefined {
  if (!l.name.startsWith(RETIRED_PREFIX) || !l.alias?.startsWith("berth-retired:")) return undefined;
  return l.alias.slice("berth-retired:".length);
}

/** Deletes the retired links that were `name` (or whose old name passes `match`); returns how many went. */
export async function deleteRetiredLinks(nl: Rtnl, match: (oldName: string) => boolean): Promise<number> {
  let n = 0;
  for (const l of await nl.linkListAsync()) {
    const was = retiredFrom(l);
    if (was === undefined || !match(was)) continue;
    try {
      await nl.linkDelAsync(l.index);
      n++;
    } catch (e) {
      if (!isNetlinkError(e, "ENODEV")) throw e; // the background delete got there first
    }
  }
  return n;
}

/**
 * Takes a link out of service for a deferred delete: down (and off its bridge with `detach`),
 * then renamed to `bz<hex>` so its own name is free for the next ADD at once. One batch, on the
 * thread pool unless its socket says inline: a busy agent's thread does not wait while the
 * kernel takes a bridge port down. (A link must be down before it can be renamed, hence two
 * messages.)
 */
export function takeOutOfService(nl: Rtnl, index: number, opts: { detach?: boolean; alias?: string } = {}): Promise<void> {
  const name = `${RETIRED_PREFIX}${randomBytes(4).toString("hex")}`;
  return nl
    .batch()
    .linkSet(index, opts.detach ? { up: false, master: null } : { up: false })
    .linkSet(index, opts.alias === undefined ? { name } : { name, alias: opts.alias })
    .runAsync();
}

/** A random unicast, locally administered MAC. */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");
}

export interface VethOptions {
  mtu?: number;
  /** The container end's MAC (CNI_ARGS MAC / runtimeConfig.mac); else a random one of ours. */
  mac?: string;
  /** Enslave the host end at creation (bridge): no separate round trip, and atomic with it. */
  master?: number;
  /** Bring the host end up at creation. */
  up?: boolean;
}

/**
 * The attachment's veth pair: `host` in the host netns, the request's ifname created directly
 * in the container's netns, in one RTM_NEWLINK. Both MACs are chosen here, not left random to
 * the kernel: udev's MACAddressPolicy rewrites random MACs behind our back. The
 * caller has made sure the container interface does not exist (a repeated ADD must fail before
 * IPAM); a stale host end (a DEL that never ran) is then found by the EEXIST it causes,
 * removed, and the creation retried. The new pair's removal goes onto the ADD's undo stack.
 * The kernel's part runs on the thread pool (see whileCreating). Returns both ends' index and
 * MAC (the container end's from the kernel's echo, when it sends one).
 */
export async function createVethPair(
  hostNl: Rtnl,
  req: Request,
  ns: Netns,
  host: string,
  link: VethOptions,
  undo: Undo,
): Promise<VethPair> {
  const mac = randomMac();
  const podMac = link.mac ?? randomMac();
  const spec = {
    kind: "veth" as const,
    name: host,
    mtu: link.mtu,
    mac,
    master: link.master,
    up: link.up,
    peer: { name: req.ifname, netns: ns, mtu: link.mtu, mac: podMac },
  };
  let created: Link | undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      created = await hostNl.linkAddAsync(spec);
      break;
    } catch (e) {
      if (!isNetlinkError(e, "EEXIST")) throw kernelError(`create veth ${host}/${req.ifname}`, e);
      if (attempt > 1 || !hostNl.linkGet(host)) {
        throw new CniError(ErrorCode.InvalidConfig, `interface ${req.ifname} already exists in ${req.netns}`);
      }
      await deleteLinkIfPresent(hostNl, host);
    }
  }
  undo.push(() => deleteLinkIfPresent(hostNl, host));
  const index = created?.index ?? hostNl.linkIndex(host);
  // The echo's IFLA_LINK is the container end's index there: no lookup in the container.
  const podIndex = created?.linkNetnsId !== undefined ? created.parentIndex : undefined;
  const pod = podIndex === undefined ? undefined : { index: podIndex, mac: podMac, mtu: link.mtu ?? VETH_DEFAULT_MTU };
  return { index, mac, pod };
}

/** What the kernel gives a veth without IFLA_MTU (ether_setup's ETH_DATA_LEN). */
const VETH_DEFAULT_MTU = 1500;

export interface VethPair {
  /** The host end. */
  index: number;
  mac: string;
  /** The container end, as created, when the kernel's echo named it (kernels since 6.1). */
  pod?: { index: number; mac: string; mtu: number };
}

/**
 * Runs `work` (the ADD's IPAM) on this thread while `creating` (a createVethPair already under
 * way on the thread pool) goes on, and returns both. If either fails, the other is waited for
 * first, so that whatever it made is on the undo stack before the ADD unwinds.
 */
export async function whileCreating<A, B>(creating: Promise<A>, work: () => Promise<B>): Promise<[A, B]> {
  creating.catch(() => {}); // awaited below; must not count as unhandled meanwhile
  let done: B;
  try {
    done = await work();
  } catch (e) {
    await creating.catch(() => {});
    throw e;
  }
  return [await creating, done];
}

/**
 * Addresses the container interface holds (for DEL's rule cleanup): what the ADD configured,
 * read back from the kernel. prevResult is not taken for it: a wrong one would leave this
 * attachment's rules behind, or remove another attachment's.
 */
async function interfaceAddresses(req: Request, podNl: Rtnl): Promise<string[]> {
  const link = await podNl.linkGetAsync(req.ifname);
  if (!link) return [];
  return (await podNl.addrListAsync({ ifindex: link.index })).filter((a) => a.scope !== "link").map((a) => a.cidr);
}

/**
 * GC of host-side links: deletes every link of `network` (recognised by its deterministic
 * name) whose attachment is not in `valid`. Returns the failures, so GC can go on past them.
 */
export async function gcHostLinks(prefix: "bv" | "bp", network: string, valid: Attachment[]): Promise<string[]> {
  const keep = new Set(valid.map((a) => hostLinkName(prefix, network, a.containerID, a.ifname)));
  const tag = `${prefix}${networkTag(network)}`;
  const errors: string[] = [];
  await withRtnl(undefined, async (nl) => {
    for (const l of nl.linkList()) {
      // Links retired by a DEL whose background delete never ran (the process died) are
      // garbage whatever their attachment: that DEL has answered.
      const was = retiredFrom(l);
      const stale = was === undefined ? l.name.length === 14 && l.name.startsWith(tag) && !keep.has(l.name) : was.startsWith(tag);
      if (!stale) continue;
      try {
        await nl.linkDelAsync(l.index);
      } catch (e) {
        if (!isNetlinkError(e, "ENODEV") && !isNetlinkError(e, "ENOENT")) errors.push(`${l.name}: ${(e as Error).message}`);
      }
    }
  });
  return errors;
}

/**
 * DEL of a veth attachment: reads the addresses its container interface holds (for rule
 * cleanup; [] when it is gone, and callers then find the rules by the attachment's tag), then
 * removes the pair through its host end (retired in the background when a resident process
 * allows it); when the host end is already gone, deletes the container end directly.
 */
export async function removePair(req: Request, ns: Netns | null, hostNl: Rtnl, host: string): Promise<string[]> {
  let addresses: string[] = [];
  const podNl = ns ? Rtnl.open(ns, req.host) : null;
  try {
    if (podNl) addresses = await interfaceAddresses(req, podNl);
    const removed = await retireLinkIfPresent(hostNl, host, req.host.linkRetirer);
    // Not there by its name: it may have been retired by a process that died before deleting it.
    if (!removed) await deleteRetiredLinks(hostNl, (was) => was === host);
    if (podNl) {
      if (!removed) await deleteLinkIfPresent(podNl, req.ifname);
      else {
        // Retired, not yet deleted: free the container's interface name for a new ADD now.
        const pod = await podNl.linkGetAsync(req.ifname);
        if (pod) {
          try {
            await takeOutOfService(podNl, pod.index);
          } catch (e) {
            // The background delete won the race: the name is free either way.
            if (!isNetlinkError(e, "ENODEV")) throw e;
          }
        }
      }
    }
  } finally {
    podNl?.close();
  }
  return addresses;
}
