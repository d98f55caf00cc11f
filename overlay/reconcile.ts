// Desired versus actual dataplane state, and the loop that makes the kernel match.
// Per remote host (flannel's L3 scheme): one permanent neighbour (remote subnet's network
// address → remote VTEP MAC), one FDB entry (remote VTEP MAC → remote public IP) and one route
// (remote subnet via the network address, onlink). The diff is a pure function; the loop runs
// it periodically and on demand, and never deletes-then-re-adds an entry that is already right.
import { formatIp, parseIp, Subnet } from "../cni/address/address.ts";

/** A remote host as the dataplane needs it. */
export interface Peer {
  /** Store key of its lease (stable identity). */
  key: string;
  subnet: Subnet;
  subnetV6?: Subnet;
  publicIP: string;
  vtepMAC: string;
}

export interface NeighEntry {
  ip: string;
  mac: string;
}

export interface FdbEntry {
  mac: string;
  dst: string;
}

export interface RouteEntry {
  /** CIDR. */
  dst: string;
  gateway: string;
}

export interface DataplaneState {
  neighbours: NeighEntry[];
  fdb: FdbEntry[];
  routes: RouteEntry[];
}

export type DataplaneOp =
  | ({ op: "neigh-replace" } & NeighEntry)
  | ({ op: "neigh-del" } & NeighEntry)
  | ({ op: "fdb-replace" } & FdbEntry)
  | ({ op: "fdb-del" } & FdbEntry)
  | ({ op: "route-replace" } & RouteEntry)
  | ({ op: "route-del" } & RouteEntry);

/** What the reconciler needs from the kernel side (implemented on rtnetlink in vxlan.ts). */
export interface Dataplane {
  /** Creates or repairs the VXLAN device (and its address); returns true when it was (re)created. */
  ensureDevice(): Promise<boolean>;
  /** Our device's permanent neighbours, remote FDB entries and routes. */
  read(): Promise<DataplaneState>;
  apply(op: DataplaneOp): Promise<void>;
}

/** The VXLAN device the dataplane keeps in place. */
export interface VxlanDeviceSpec {
  /** berth.<vni> */
  name: string;
  vni: number;
  /** UDP destination port. */
  port: number;
  /** Local underlay address (VXLAN source). */
  local: string;
  underlayIface: string;
  mtu: number;
  mac: string;
  /** The lease's network address(es) as /32 (/128). */
  addresses: string[];
  /** Cluster networks: other addresses from them on the device are removed. */
  clusterNetworks: string[];
}

/** A dataplane bound to one device, with a feed of kernel changes that concern it. */
export interface ManagedDataplane extends Dataplane {
  /** Calls `onChange` when the kernel reports a change to our device or its entries. */
  watch(onChange: (what: string) => void): void;
  close(): void;
}

function canonicalIp(ip: string): string {
  try {
    return formatIp(parseIp(ip));
  } catch {
    return ip;
  }
}

function canonicalCidr(cidr: string): string {
  try {
    return Subnet.parseMasked(cidr).toString();
  } catch {
    return cidr;
  }
}

/**
 * The entries the peers call for. Peers are taken in key order; when two claim the same VTEP
 * MAC or subnet (a misconfiguration), the first one wins so the result is deterministic.
 */
export function desiredState(peers: Peer[], options: { ipv6: boolean }): DataplaneState {
  const neighbours = new Map<string, NeighEntry>();
  const fdb = new Map<string, FdbEntry>();
  const routes = new Map<string, RouteEntry>();
  for (const p of [...peers].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))) {
    const mac = p.vtepMAC.toLowerCase();
    if (!fdb.has(mac)) fdb.set(mac, { mac, dst: canonicalIp(p.publicIP) });
    const subnets = options.ipv6 && p.subnetV6 ? [p.subnet, p.subnetV6] : [p.subnet];
    for (const s of subnets) {
      const gw = s.nth(0n);
      const dst = String(s);
      if (!neighbours.has(gw)) neighbours.set(gw, { ip: gw, mac });
      if (!routes.has(dst)) routes.set(dst, { dst, gateway: gw });
    }
  }
  return { neighbours: [...neighbours.values()], fdb: [...fdb.values()], routes: [...routes.values()] };
}

/**
 * The operations that turn `actual` into `desired`, in a safe order: stale routes go first,
 * then neighbours and FDB entries are put in place before the routes that use them, and
 * leftovers (including the old FDB entry of a host whose MAC changed) are removed last.
 */
export function diffDataplane(desired: DataplaneState, actual: DataplaneState): DataplaneOp[] {
  const ops: DataplaneOp[] = [];
  const actualNeigh = new Map(actual.neighbours.map((n) => [canonicalIp(n.ip), n.mac.toLowerCase()]));
  const actualRoutes = new Map(actual.routes.map((r) => [canonicalCidr(r.dst), canonicalIp(r.gateway)]));
  const actualFdb = new Map<string, string[]>();
  for (const f of actual.fdb) {
    const mac = f.mac.toLowerCase();
    actualFdb.set(mac, [...(actualFdb.get(mac) ?? []), canonicalIp(f.dst)]);
  }
  const wantNeigh = new Map(desired.neighbours.map((n) => [n.ip, n.mac]));
  const wantFdb = new Map(desired.fdb.map((f) => [f.mac, f.dst]));
  const wantRoutes = new Map(desired.routes.map((r) => [r.dst, r.gateway]));

  for (const r of actual.routes) {
    if (!wantRoutes.has(canonicalCidr(r.dst))) ops.push({ op: "route-del", dst: r.dst, gateway: r.gateway });
  }
  for (const n of desired.neighbours) {
    if (actualNeigh.get(n.ip) !== n.mac) ops.push({ op: "neigh-replace", ...n });
  }
  for (const f of desired.fdb) {
    const dsts = actualFdb.get(f.mac);
    if (dsts?.length !== 1 || dsts[0] !== f.dst) ops.push({ op: "fdb-replace", ...f });
  }
  for (const r of desired.routes) {
    if (actualRoutes.get(r.dst) !== r.gateway) ops.push({ op: "route-replace", ...r });
  }
  for (const n of actual.neighbours) {
    if (!wantNeigh.has(canonicalIp(n.ip))) ops.push({ op: "neigh-del", ip: n.ip, mac: n.mac });
  }
  for (const f of actual.fdb) {
    const mac = f.mac.toLowerCase();
    const dst = canonicalIp(f.dst);
    // A MAC with no peer, or an extra destination next to the one we want (replace keeps one).
    if (!wantFdb.has(mac) || (wantFdb.get(mac) !== dst && (actualFdb.get(mac)?.length ?? 0) > 1)) {
      ops.push({ op: "fdb-del", mac: f.mac, dst: f.dst });
    }
  }
  return ops;
}

export interface ReconcileStats {
  runs: number;
  /** Operations applied because the desired state changed (hosts added, removed, changed). */
  changes: number;
  /** Operations applied although nothing changed on our side: someone altered the kernel state. */
  repairs: number;
  failures: number;
  deviceRecreations: number;
  lastRunAt: number | null;
  lastError: string | null;
  /** True after a run that ended with the kernel matching the desired state. */
  converged: boolean;
}

export interface ReconcilerHooks {
  onRun?: (result: { ops: DataplaneOp[]; drift: boolean; durationMs: number; error?: unknown }) => void;
  onOpError?: (op: DataplaneOp, error: unknown) => void;
}

/** Runs the diff against the kernel, serialised: a trigger during a run schedules one more run. */
export class Reconciler {
  private peers = new Map<string, Peer>();
  /** False until the first setPeers: an empty map then means "not listed yet", not "no peers". */
  private peersKnown = false;
  private ipv6 = false;
  private desiredVersion = 0;
  private convergedVersion = -1;
  private running: Promise<void> | null = null;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  readonly stats: ReconcileStats = {
    runs: 0,
    changes: 0,
    repairs: 0,
    failures: 0,
    deviceRecreations: 0,
    lastRunAt: null,
    lastError: null,
    converged: false,
  };

  constructor(
    private readonly dataplane: Dataplane,
    private readonly hooks: ReconcilerHooks = {},
  ) {}

  /** Replaces the whole peer set (after a list). Unchanged peers cause no kernel operation. */
  setPeers(peers: Peer[], options: { ipv6: boolean }): void {
    const next = new Map(peers.map((p) => [p.key, p]));
    if (!this.peersKnown || !samePeers(this.peers, next) || this.ipv6 !== options.ipv6) {
      this.peersKnown = true;
      this.peers = next;
      this.ipv6 = options.ipv6;
      this.desiredVersion++;
    }
  }

  upsertPeer(peer: Peer): void {
    if (!this.peersKnown) return;
    const old = this.peers.get(peer.key);
    if (old && samePeer(old, peer)) return;
    this.peers.set(peer.key, peer);
    this.desiredVersion++;
  }

  removePeer(key: string): void {
    if (this.peers.delete(key)) this.desiredVersion++;
  }

  get peerList(): Peer[] {
    return [...this.peers.values()];
  }

  /** Starts periodic runs. */
  start(intervalMs = 5000): void {
    this.stop();
    this.timer = setInterval(() => void this.trigger(), intervalMs);
    this.timer.unref?.();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Runs now, or right after the run in progress. Resolves when the state is reconciled. */
  trigger(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.runOnce();
        } while (this.again);
      } finally {
        this.running = null;
      }
    })();
    return this.running;
  }

  private async runOnce(): Promise<void> {
    const started = performance.now();
    const version = this.desiredVersion;
    // Nothing changed on our side since the last converged run: any op is drift repair.
    const drift = version === this.convergedVersion;
    this.stats.runs++;
    this.stats.lastRunAt = Date.now();
    let ops: DataplaneOp[] = [];
    try {
      if (await this.dataplane.ensureDevice()) this.stats.deviceRecreations++;
      if (!this.peersKnown) {
        // A restart before the store answered: leave the entries of the last run in place.
        this.stats.lastError = null;
        this.hooks.onRun?.({ ops, drift, durationMs: performance.now() - started });
        return;
      }
      const desired = desiredState([...this.peers.values()], { ipv6: this.ipv6 });
      ops = diffDataplane(desired, await this.dataplane.read());
      let failed = 0;
      for (const op of ops) {
        try {
          await this.dataplane.apply(op);
        } catch (e) {
          failed++;
          this.hooks.onOpError?.(op, e);
        }
      }
      const applied = ops.length - failed;
      if (drift) this.stats.repairs += applied;
      else this.stats.changes += applied;
      if (failed > 0) throw new Error(`${failed} of ${ops.length} dataplane operations failed`);
      this.convergedVersion = version;
      this.stats.converged = version === this.desiredVersion;
      this.stats.lastError = null;
      this.hooks.onRun?.({ ops, drift, durationMs: performance.now() - started });
    } catch (e) {
      this.stats.failures++;
      this.stats.converged = false;
      this.stats.lastError = (e as Error)?.message ?? String(e);
      this.hooks.onRun?.({ ops, drift, durationMs: performance.now() - started, error: e });
    }
  }
}

function samePeer(a: Peer, b: Peer): boolean {
  return (
    a.key === b.key &&
    String(a.subnet) === String(b.subnet) &&
    (a.subnetV6 ? String(a.subnetV6) : "") === (b.subnetV6 ? String(b.subnetV6) : "") &&
    canonicalIp(a.publicIP) === canonicalIp(b.publicIP) &&
    a.vtepMAC.toLowerCase() === b.vtepMAC.toLowerCase()
  );
}

function samePeers(a: Map<string, Peer>, b: Map<string, Peer>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, p] of a) {
    const q = b.get(k);
    if (!q || !samePeer(p, q)) return false;
  }
  return true;
}
