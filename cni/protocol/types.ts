// The CNI contract every berth plugin is written against. Plugin logic is a plain async
// function from a parsed Request to a Result (newest shape, 1.1.0): it never reads
// process.env, stdin or stdout. The executable entry (cni/protocol/entry.ts) and the agent's
// fast path (cni/fastpath/server.ts) do the I/O and the version conversion.
import type { NetlinkScheduling, Rtnl } from "../../native/netlink/socket.ts";
import type { Shape } from "./schema.ts";

/** Spec error codes (SPEC.md "Error" section) plus libcni's extras. */
export const ErrorCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnvironment: 4,
  IoFailure: 5,
  DecodeFailure: 6,
  InvalidConfig: 7,
  /** libcni: CNI_NETNS is the plugin's own network namespace (CNI_NETNS_OVERRIDE=1 bypasses). */
  InvalidNetns: 8,
  TryAgainLater: 11,
  PluginNotAvailable: 50,
  PluginNotAvailableExistingDegraded: 51,
  Internal: 999,
} as const;

/** A spec-shaped failure: printed as {cniVersion, code, msg, details} on stdout. */
export class CniError extends Error {
  constructor(
    readonly code: number,
    msg: string,
    readonly details?: string,
  ) {
    super(msg);
    this.name = "CniError";
  }
}

export type Command = "ADD" | "DEL" | "CHECK" | "VERSION" | "GC" | "STATUS";

export interface Route {
  dst: string; // CIDR
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}

export interface Dns {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}

export interface Interface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
  socketPath?: string;
  pciID?: string;
}

export interface IpConfig {
  address: string; // CIDR, e.g. 10.1.0.5/24
  gateway?: string;
  interface?: number; // index into interfaces
}

/** A result in the newest shape (1.0.0 / 1.1.0). Conversion to older versions is the spec layer's job. */
export interface Result {
  cniVersion: string;
  interfaces?: Interface[];
  ips?: IpConfig[];
  routes?: Route[];
  dns?: Dns;
}

export interface Attachment {
  containerID: string;
  ifname: string;
}

/** The network configuration as the plugin receives it (one plugin's object from a conflist, with name/cniVersion injected). */
export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  ipMasq?: boolean;
  ipam?: { type: string; [key: string]: unknown };
  dns?: Dns;
  runtimeConfig?: Record<string, unknown>;
  args?: Record<string, unknown>;
  prevResult?: Result; // already converted to the newest shape by the spec layer
  "cni.dev/valid-attachments"?: Attachment[];
  "cni.dev/attachments"?: Attachment[];
  [key: string]: unknown;
}

/** Everything a plugin gets for one invocation. */
export interface Request {
  command: Command;
  containerId: string; // "" for GC/STATUS/VERSION
  netns: string; // "" when absent (DEL may omit it)
  ifname: string;
  /** CNI_ARGS parsed into key/value pairs (IgnoreUnknown handled by the spec layer). */
  args: Record<string, string>;
  /** CNI_PATH split on ':' */
  path: string[];
  config: NetConf;
  /** The raw stdin bytes, for delegating to another plugin with the same input. */
  stdin: Buffer;
  /** The original environment subset (CNI_*) for delegation. */
  env: Record<string, string>;
  /**
   * Writes of this invocation whose fsync is still running (the agent's lease store commits
   * first and syncs on the thread pool meanwhile, see LeaseStore.grouped). No result may be
   * given before they settle: a plugin awaits them with awaitDurable(req) where a failure can
   * still be undone; handleInvocation awaits the rest before it answers.
   */
  pendingSync?: Promise<void>[];
  /** What the process running this invocation offers it: COLD_PATH_HOST, or the agent's fast path. */
  host: InvocationHost;
}

/**
 * How a DEL takes a host-side link away when the host offers it. A short-lived plugin deletes
 * the link and waits (~20 ms: the kernel's RCU barrier per delete). A resident process (the
 * agent's fast path) takes the link out of service at once — down, off the bridge, renamed so
 * the next ADD for the attachment can reuse the name — and deletes it in the background.
 * Resolves false when the link was not there.
 */
export type LinkRetirer = (nl: Rtnl, name: string) => Promise<boolean>;

/**
 * The invocation's host: what differs between a plugin process of its own (the cold path)
 * and the agent running the plugin in-process for the launcher (the fast path). It is also the
 * netlink scheduling of the sockets a plugin opens for the invocation (Rtnl.open(ns, req.host)).
 */
export interface InvocationHost extends NetlinkScheduling {
  /**
   * Sync mode: lease commits skip their fsync and sync the database's log on the thread pool
   * instead, pushing that sync onto Request.pendingSync (awaited before the result is given).
   */
  readonly deferSyncs: boolean;
  /**
   * Netlink scheduling: whether short netlink requests may run on this thread now (else on the
   * thread pool, while other invocations in the same process may hold the rtnl lock).
   */
  shortRequestsInline(): boolean;
  /** Link retirement: DEL retires host links through this instead of deleting them and waiting. */
  readonly linkRetirer?: LinkRetirer;
}

/** A plugin process of its own: fsync'd commits, short netlink requests inline, links deleted at once. */
export const COLD_PATH_HOST: InvocationHost = Object.freeze({ deferSyncs: false, shortRequestsInline: () => true });

/** Waits for the invocation's pending fsyncs (see Request.pendingSync); a failed one throws. */
export async function awaitDurable(req: Request): Promise<void> {
  const pending = req.pendingSync;
  while (pending && pending.length > 0) await Promise.all(pending.splice(0));
}

/**
 * A plugin: one async function per command. Missing GC/STATUS mean "nothing to do" (success).
 * ADD returns a Result; CHECK/DEL/GC/STATUS return void; throwing a CniError reports it.
 */
export interface Plugin {
  /** e.g. "berth-bridge" */
  name: string;
  /** CNI_ARGS keys this plugin reads (e.g. "IP", "MAC"); others are refused unless IgnoreUnknown=1. */
  cniArgs?: readonly string[];
  /** The plugin's own config keys (an IPAM plugin's: its ipam section), for the configuration reference. */
  schema?: { fields: Shape; rules: { exclusive?: readonly (readonly [string, string])[] } };
  add(req: Request): Promise<Result>;
  del(req: Request): Promise<void>;
  check(req: Request): Promise<void>;
  gc?(req: Request): Promise<void>;
  status?(req: Request): Promise<void>;
}
