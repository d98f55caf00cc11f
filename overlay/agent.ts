// `berth agent` / `berth up`: the per-host overlay agent.
// lease a subnet → program the VXLAN device → list + watch all leases → reconcile the kernel
// (periodically, on store events, on netlink events for our device) → tell the CNI plugin
// through <run-dir>/overlay.json → serve health, readiness, metrics and state over HTTP.
//
// When the store is unreachable nothing is torn down: the kernel keeps the last known peers,
// the agent reports not-ready and retries with backoff, and on return it re-lists and applies
// only the differences (unchanged peers see no kernel operation at all). A probe with a short
// deadline runs all along, so readiness follows the store within seconds whatever the lease TTL,
// and the store's return wakes every waiting loop at once. A store that comes back without its
// history (wiped, or a new cluster at the same address) is re-registered in, and the peers it
// lost stay programmed for a grace period while they re-register.

import { hostname } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import { makeDirectory } from "../cni/protocol/files.ts";
import { ListenFdsError, type PassedListener, takeListener, untakenListeners } from "../native/listen-fds.ts";
import { createLogger } from "../native/log.ts";
import { waitForStopSignal } from "../native/signals.ts";
import { type AgentView, buildApi, type LeaseView, listenApi, type PeerView, type Readiness } from "./api.ts";
import { AGENT_USAGE, type AgentConfig, AgentConfigError, parseAgentConfig } from "./config.ts";
import {
  type HostLease,
  LeaseError,
  type LeaseValue,
  type NetworkConfig,
  networkConfig,
  parseLeaseEntry,
  SubnetLeaseManager,
} from "./lease.ts";
import { AgentMetrics } from "./metrics.ts";
import { type ManagedDataplane, type Peer, Reconciler, type VxlanDeviceSpec } from "./reconcile.ts";
import { writeOverlayRuntime } from "./runtime-file.ts";
import { EtcdStore } from "./store/etcd.ts";
import { inClusterConnection, KubeClient, KubeConfigError, KubeStore, kubeconfigConnection } from "./store/kube.ts";
import { LocalStore } from "./store/local.ts";
import type { ClusterStore, StoreWatch, WatchEvent } from "./store/store.ts";
import { discoverUnderlay, type Underlay, UnderlayError, vxlanOverhead } from "./underlay.ts";

export type DataplaneFactory = (spec: VxlanDeviceSpec, logger: Logger) => Promise<ManagedDataplane>;

export interface AgentDeps {
  /** Defaults to the rtnetlink VXLAN dataplane (overlay/vxlan.ts). */
  dataplane?: DataplaneFactory;
  store?: ClusterStore;
  logger?: Logger;
  /** Skips discovery (tests that keep the dataplane in another namespace than the process). */
  underlay?: Underlay;
  /** The CNI socket a service manager passed (socket activation): served instead of binding cniSocket. */
  cniListener?: PassedListener;
}

/** Exponential backoff with jitter, reset on success. */
class Backoff {
  private attempt = 0;
  constructor(
    private readonly minMs = 500,
    private readonly maxMs = 30_000,
  ) {}
  next(): number {
    const base = Math.min(this.maxMs, this.minMs * 2 ** this.attempt++);
    return base / 2 + Math.random() * (base / 2);
  }
  reset(): void {
    this.attempt = 0;
  }
}

interface RemoteHost extends Peer {
  hostname: string;
}

/** The loops that wait on a timer; each has at most one pending. */
type Slot = "acquire" | "renew" | "sync" | "probe" | "grace";

/** Store probe period while the store answers, and while it does not. */
const PROBE_INTERVAL_MS = 1000;
const PROBE_RETRY_MS = 250;

/** The same host under another key: same VTEP MAC or same underlay address. */
/** The cluster store the config names. */
function openStore(config: AgentConfig): ClusterStore {
  switch (config.store) {
    case "etcd":
      return new EtcdStore({
        endpoints: config.etcdEndpoints,
        caFile: config.etcdCa,
        certFile: config.etcdCert,
        keyFile: config.etcdKey,
      });
    case "kube":
      try {
        const conn = config.kubeconfig ? kubeconfigConnection(config.kubeconfig) : inClusterConnection();
        return new KubeStore({
          client: new KubeClient(conn),
          nodeName: config.nodeName ?? hostname(),
          prefix: config.etcdPrefix,
        });
      } catch (e) {
        if (e instanceof KubeConfigError) throw new AgentConfigError(`--store kube: ${e.message}`);
        throw e;
      }
    default:
      return new LocalStore({ path: config.localStore ?? join(config.stateDir, "store.db") });
  }
}

function sameHost(a: RemoteHost, b: RemoteHost): boolean {
  return a.vtepMAC === b.vtepMAC || a.publicIP === b.publicIP;
}

export class Agent {
  readonly metrics = new AgentMetrics();
  readonly logger: Logger;
  private readonly store: ClusterStore;
  private readonly ownsStore: boolean;
  private readonly network: NetworkConfig;
  private readonly leases: SubnetLeaseManager;
  private readonly underlay: Underlay;
  readonly mtu: number;
  private readonly deviceName: string;
  private readonly makeDataplane: DataplaneFactory;
  private lease: HostLease | null = null;
  /** Why the last lease attempt failed (not a store outage): shown in /readyz. */
  private leaseProblem: string | null = null;
  private dataplane: ManagedDataplane | null = null;
  private reconciler: Reconciler | null = null;
  private remotes = new Map<string, RemoteHost>();
  private storeUp = false;
  private deviceReady = false;
  private stopped = false;
  private watch: StoreWatch | null = null;
  private timers = new Set<NodeJS.Timeout>();
  private api: { close(): Promise<void>; tcpPort?: number } | null = null;
  private cniServer: { close(): Promise<void> } | null = null;
  private readonly cniListener: PassedListener | undefined;
  private readonly leaseBackoff = new Backoff();
  private readonly syncBackoff = new Backoff();
  private syncing = false;
  private peersListed = false;
  /** The single pending timer of each loop. */
  private readonly slots = new Map<Slot, NodeJS.Timeout>();
  private renewing = false;
  /** Highest revision seen in lists and watch events: a lower one means the store lost its history. */
  private highestRevision = 0;
  /** Peers a reset store lost, kept programmed until they re-register or the grace period ends. */
  private readonly retained = new Map<string, RemoteHost>();

  constructor(
    readonly config: AgentConfig,
    deps: AgentDeps = {},
  ) {
    this.logger = deps.logger ?? createLogger({ component: "berth-agent", level: config.logLevel, format: config.logFormat });
    const network = networkConfig(config.clusterCidrs, config.subnetLen, config.subnetLenV6);
    this.network = network;
    this.underlay = deps.underlay ?? discoverUnderlay({ iface: config.underlayIface, publicIP: config.publicIP });
    const maxMtu = this.underlay.mtu - vxlanOverhead(this.underlay.family);
    if (config.mtu !== undefined && config.mtu > maxMtu) {
      throw new AgentConfigError(
        `--mtu ${config.mtu} is too large: ${this.underlay.iface} has MTU ${this.underlay.mtu}, VXLAN over IPv${this.underlay.family} needs ${vxlanOverhead(this.underlay.family)} bytes, so at most ${maxMtu}`,
      );
    }
    this.mtu = config.mtu ?? maxMtu;
    this.deviceName = `berth.${config.vni}`;
    if (this.deviceName.length > 15)
      throw new AgentConfigError(`--vni ${config.vni}: device name ${this.deviceName} is too long`);
    for (const [flag, dir, mode] of [
      ["--state-dir", config.stateDir, 0o700],
      ["--run-dir", config.runDir, 0o755],
    ] as const) {
      try {
        makeDirectory(dir, mode);
      } catch (e) {
        throw new AgentConfigError(`${flag} ${dir}: ${(e as Error).message}`);
      }
    }
    this.ownsStore = deps.store === undefined;
    this.store = deps.store ?? openStore(config);
    const kube = this.store instanceof KubeStore ? this.store : null;
    this.leases = new SubnetLeaseManager({
      store: this.store,
      prefix: config.etcdPrefix,
      network,
      stateDir: config.stateDir,
      publicIP: this.underlay.publicIP,
      vni: config.vni,
      ttlSeconds: config.leaseTtlSeconds,
      ...(kube ? { assigned: () => kube.assignedSubnets(), hostname: kube.nodeName } : {}),
    });
    this.cniListener = deps.cniListener;
    this.metrics.readyNow = () => this.readiness().ready;
    this.makeDataplane =
      deps.dataplane ??
      (async (spec, logger) => {
        const { openVxlanDataplane } = await import("./vxlan.ts");
        return openVxlanDataplane(spec, logger);
      });
  }

  get apiTcpPort(): number | undefined {
    return this.api?.tcpPort;
  }

  async start(): Promise<void> {
    this.logger.info(
      {
        underlay: this.underlay.iface,
        publicIP: this.underlay.publicIP,
        mtu: this.mtu,
        store: this.store.kind,
        vni: this.config.vni,
      },
      "berth agent starting",
    );
    this.writeRuntime(false);
    const app = buildApi(this.view(), this.metrics.registry, this.logger);
    this.api = await listenApi(app, this.config.apiSocket, this.config.apiListen);
    this.logger.info({ socket: this.config.apiSocket, tcp: this.config.apiListen }, "API listening");
    if (this.config.cniSocket || this.cniListener) {
      // The CNI fast path: plugin launchers hand their invocations to this process.
      const { startCniServer } = await import("../cni/fastpath/server.ts");
      const { BERTH_PLUGINS } = await import("./cni/registry.ts");
      const passed = this.cniListener;
      this.cniServer = await startCniServer({
        socketPath: this.config.cniSocket,
        plugins: BERTH_PLUGINS,
        passed,
        log: (line) => this.logger.debug(line),
      });
      this.logger.info(
        passed ? { socket: passed.path, passedAs: passed.name } : { socket: this.config.cniSocket },
        "CNI fast path listening",
      );
    }
    void this.acquireLease();
    void this.probeStore();
  }

  /** Stops the agent; the device, its entries and the lease stay (a restart picks them up). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.reconciler?.stop();
    await this.watch?.cancel().catch(() => undefined);
    this.dataplane?.close();
    this.writeRuntime(false);
    await this.cniServer?.close();
    await this.api?.close();
    if (this.ownsStore) await this.store.close();
    this.logger.info("berth agent stopped");
  }

  private markStore(up: boolean, error?: unknown): void {
    if (up !== this.storeUp) {
      if (up) {
        this.logger.info("cluster store reachable");
        // Whichever loop sees the store back first (the probe, usually) wakes the others instead
        // of leaving them in a backoff of up to 30 s: a lease not yet acquired, the peer watch.
        if (this.slots.has("acquire")) this.scheduleAcquire(0);
        if (this.slots.has("sync")) this.scheduleSync(0);
        if (this.slots.has("renew") && !this.renewing) this.renewNow();
      } else this.logger.warn({ err: (error as Error)?.message }, "cluster store unreachable; keeping the dataplane as it is");
    }
    this.storeUp = up;
    this.metrics.storeUp.set(up ? 1 : 0);
    this.updateReadyGauge();
  }

  /** Proves the store answers, whatever else is (not) going on, with the store's short deadline. */
  private async probeStore(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.store.probe();
      this.markStore(true);
    } catch (e) {
      this.metrics.storeErrors.inc({ op: "probe" });
      this.markStore(false, e);
    }
    this.rearm("probe", this.storeUp ? PROBE_INTERVAL_MS : PROBE_RETRY_MS, () => void this.probeStore());
  }

  // ---------------------------------------------------------------- lease

  private scheduleAcquire(ms: number): void {
    this.rearm("acquire", ms, () => void this.acquireLease());
  }

  private async acquireLease(): Promise<void> {
    if (this.stopped) return;
    try {
      const lease = await this.metrics.time("lease_acquire", () => this.leases.acquire());
      this.markStore(true);
      this.leaseBackoff.reset();
      this.leaseProblem = null;
      await this.onLease(lease);
      this.scheduleRenew(this.keepAliveMs());
    } catch (e) {
      if (e instanceof LeaseError) {
        if (this.leaseProblem !== e.message) this.logger.error({ err: e.message }, "cannot lease a subnet");
        this.leaseProblem = e.message;
      } else this.markStore(false, e);
      // Waiting for a subnet assigned elsewhere (a Node's podCIDR) is a short, cheap poll.
      const waitingForAssignment = e instanceof LeaseError && this.store.kind === "kube";
      this.scheduleAcquire(waitingForAssignment ? 1000 : this.leaseBackoff.next());
    }
  }

  private keepAliveMs(): number {
    return Math.max(1000, Math.min((this.config.leaseTtlSeconds * 1000) / 3, 60_000));
  }

  /** (Re)arms the single pending timer of `slot`: a newer call replaces the older one. */
  private rearm(slot: Slot, ms: number, fn: () => void): void {
    const old = this.slots.get(slot);
    if (old) {
      clearTimeout(old);
      this.timers.delete(old);
      this.slots.delete(slot);
    }
    if (this.stopped) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      this.slots.delete(slot);
      fn();
    }, ms);
    this.timers.add(t);
    this.slots.set(slot, t);
  }

  /** One renewal loop; renewNow() pulls the next renewal forward. */
  private scheduleRenew(ms: number): void {
    this.rearm("renew", ms, () => void this.renewLease());
  }

  private renewNow(): void {
    if (!this.renewing) this.scheduleRenew(0);
  }

  private async renewLease(): Promise<void> {
    if (this.stopped || this.renewing) return;
    this.renewing = true;
    try {
      const held = this.lease;
      const lease = await this.metrics.time("lease_renew", () => this.leases.renew());
      this.markStore(true);
      this.leaseBackoff.reset();
      // Our lease was gone from the store: a wiped store looks like this before any list shows it.
      if (held && (lease.key !== held.key || lease.leaseId !== held.leaseId)) this.storeReset("our lease was gone");
      await this.onLease(lease);
      this.scheduleRenew(this.keepAliveMs());
    } catch (e) {
      if (e instanceof LeaseError) this.logger.error({ err: e.message }, "lost the subnet lease and cannot get one back");
      else this.markStore(false, e);
      this.scheduleRenew(Math.min(this.keepAliveMs(), this.leaseBackoff.next()));
    } finally {
      this.renewing = false;
    }
  }

  private async onLease(lease: HostLease): Promise<void> {
    const old = this.lease;
    this.lease = lease;
    this.metrics.leaseHeld.set(1);
    const sameSubnet =
      old &&
      String(old.subnet) === String(lease.subnet) &&
      (old.subnetV6 ? String(old.subnetV6) : "") === (lease.subnetV6 ? String(lease.subnetV6) : "");
    if (sameSubnet && this.dataplane) return;
    this.logger.info(
      { subnet: String(lease.subnet), subnetV6: lease.subnetV6 && String(lease.subnetV6), key: lease.key },
      "subnet leased",
    );
    await this.setUpDataplane(lease);
    if (!this.syncing) void this.syncPeers();
  }

  // ---------------------------------------------------------------- dataplane

  private deviceSpec(lease: HostLease): VxlanDeviceSpec {
    const addresses = [`${lease.subnet.nth(0n)}/32`];
    if (lease.subnetV6) addresses.push(`${lease.subnetV6.nth(0n)}/128`);
    return {
      name: this.deviceName,
      vni: this.config.vni,
      port: this.config.vxlanPort,
      local: this.underlay.publicIP,
      underlayIface: this.underlay.iface,
      mtu: this.mtu,
      mac: this.leases.vtepMAC,
      addresses,
      clusterNetworks: this.config.clusterCidrs,
    };
  }

  private async setUpDataplane(lease: HostLease): Promise<void> {
    this.reconciler?.stop();
    this.dataplane?.close();
    this.deviceReady = false;
    const dataplane = await this.makeDataplane(this.deviceSpec(lease), this.logger);
    this.dataplane = dataplane;
    const reconciler = new Reconciler(dataplane, {
      onRun: ({ ops, drift, durationMs, error }) => {
        this.metrics.operationSeconds.observe({ op: "reconcile" }, durationMs / 1000);
        this.metrics.reconcileRuns.inc({ outcome: error ? "failed" : "ok" });
        for (const o of ops) this.metrics.reconcileOps.inc({ op: o.op, reason: drift ? "drift" : "change" });
        if (drift && ops.length > 0) this.logger.warn({ ops }, "repaired dataplane drift");
        else if (ops.length > 0) this.logger.info({ ops: ops.length }, "dataplane updated");
        if (error) this.logger.error({ err: (error as Error).message }, "reconcile failed");
        if (!error && !this.deviceReady) {
          this.deviceReady = true;
          this.writeRuntime(true);
        }
        this.updateReadyGauge();
      },
      onOpError: (op, e) => this.logger.error({ op, err: (e as Error).message }, "dataplane operation failed"),
    });
    let first = true;
    const origEnsure = dataplane.ensureDevice.bind(dataplane);
    dataplane.ensureDevice = async () => {
      const created = await origEnsure();
      const wasFirst = first;
      first = false;
      if (created && !wasFirst) {
        this.metrics.deviceRecreations.inc();
        this.logger.warn({ device: this.deviceName }, "VXLAN device was gone; recreated it");
      }
      return created;
    };
    this.reconciler = reconciler;
    if (this.peersListed) reconciler.setPeers([...this.remotes.values()], { ipv6: lease.subnetV6 !== undefined });
    let pending: NodeJS.Timeout | undefined;
    dataplane.watch((what) => {
      // Our own operations echo back as events: coalesce them into one run.
      if (pending) return;
      pending = setTimeout(() => {
        pending = undefined;
        if (!this.stopped && this.reconciler === reconciler) {
          this.logger.debug({ what }, "kernel change on our device");
          void reconciler.trigger();
        }
      }, 50);
    });
    reconciler.start(this.config.reconcileIntervalMs);
    await reconciler.trigger();
  }

  // ---------------------------------------------------------------- peers

  private toRemote(entry: { key: string; value: string; modRevision: number; leaseId: string | null }): RemoteHost | null {
    const lease = parseLeaseEntry(this.config.etcdPrefix, entry);
    if (!lease) {
      this.logger.warn({ key: entry.key }, "ignoring a malformed lease");
      return null;
    }
    if (lease.key === this.lease?.key || lease.value.hostId === this.leases.hostId) return null;
    // A lease is a route into this host's table: never accept one outside the cluster network
    // (a stray "0.0.0.0-0" key would otherwise replace nothing less than a default route).
    const n = this.network;
    if (!n.network.includes(lease.subnet) || lease.subnet.prefix !== n.subnetLen) {
      this.logger.warn({ key: entry.key }, "ignoring a lease outside the cluster network");
      return null;
    }
    let subnetV6 = lease.subnetV6;
    if (subnetV6 && !(n.networkV6?.includes(subnetV6) && subnetV6.prefix === n.subnetLenV6)) {
      this.logger.warn({ key: entry.key }, "ignoring the IPv6 half of a lease outside the cluster network");
      subnetV6 = undefined;
    }
    return remoteOf(lease.key, lease.subnet, subnetV6, lease.value);
  }

  /** List, apply, watch; on a reset or error, again after a backoff. */
  private async syncPeers(): Promise<void> {
    if (this.stopped) return;
    this.syncing = true;
    try {
      const prefix = `${this.config.etcdPrefix}/subnets/`;
      const { entries, revision } = await this.metrics.time("list", () => this.store.list(prefix));
      this.markStore(true);
      const listed = new Map<string, RemoteHost>();
      for (const e of entries) {
        const r = this.toRemote(e);
        if (r) listed.set(r.key, r);
      }
      const ownGone = this.lease !== null && !entries.some((e) => e.key === this.lease?.key);
      if (revision < this.highestRevision)
        this.storeReset(`store revision went back from ${this.highestRevision} to ${revision}`);
      else if (ownGone && this.peersListed) this.storeReset("our lease was gone");
      else if (ownGone) this.renewNow();
      // After a reset the new history is the one to compare against.
      this.highestRevision = revision;
      const next = this.withRetained(listed);
      this.remotes = next;
      this.peersListed = true;
      this.metrics.peers.set(next.size);
      if (this.reconciler) {
        this.reconciler.setPeers([...next.values()], { ipv6: this.lease?.subnetV6 !== undefined });
        void this.reconciler.trigger();
      }
      this.watch = await this.store.watch(
        prefix,
        revision + 1,
        (ev) => this.onWatchEvent(ev),
        (reason, cause) => {
          this.watch = null;
          this.metrics.watchResets.inc({ reason });
          if (reason !== "compacted") this.markStore(false, cause);
          this.logger.info({ reason }, "watch ended; re-listing");
          this.scheduleSync(reason === "compacted" ? 0 : this.syncBackoff.next());
        },
      );
      this.syncBackoff.reset();
    } catch (e) {
      this.markStore(false, e);
      this.metrics.storeErrors.inc({ op: "watch" });
      this.scheduleSync(this.syncBackoff.next());
    }
  }

  /** The one pending re-list (re)armed; markStore pulls it forward when the store returns. */
  private scheduleSync(ms: number): void {
    this.rearm("sync", ms, () => void this.syncPeers());
  }

  /**
   * The store lost its history (wiped, restored from nothing, or another cluster at the same
   * address): register again at once, and keep every peer known now programmed for the grace
   * period, since the others are re-registering too. Nothing that works stops working.
   */
  private storeReset(reason: string): void {
    const graceMs = this.config.storeResetGraceSeconds * 1000;
    this.metrics.storeResets.inc();
    this.logger.warn(
      { reason, peers: this.remotes.size, graceSeconds: this.config.storeResetGraceSeconds },
      "cluster store may have lost its history (wiped or replaced); registering again and keeping the known peers while they re-register",
    );
    if (this.lease) this.renewNow();
    if (graceMs === 0) return;
    for (const [key, r] of this.remotes) this.retained.set(key, r);
    this.rearm("grace", graceMs, () => this.endGrace());
  }

  /** The listed peers plus the retained ones that have not re-registered (under any key) yet. */
  private withRetained(listed: Map<string, RemoteHost>): Map<string, RemoteHost> {
    for (const [key, r] of this.retained) {
      if (listed.has(key) || [...listed.values()].some((l) => sameHost(l, r))) this.retained.delete(key);
    }
    const all = new Map(listed);
    for (const [key, r] of this.retained) all.set(key, r);
    return all;
  }

  private endGrace(): void {
    if (this.retained.size === 0) return;
    this.logger.warn({ peers: [...this.retained.keys()] }, "peers did not re-register within the grace period; removing them");
    for (const key of this.retained.keys()) {
      this.remotes.delete(key);
      this.reconciler?.removePeer(key);
    }
    this.retained.clear();
    this.metrics.peers.set(this.remotes.size);
    void this.reconciler?.trigger();
  }

  private onWatchEvent(ev: WatchEvent): void {
    this.markStore(true);
    this.highestRevision = Math.max(this.highestRevision, ev.revision);
    if (ev.key === this.lease?.key) {
      // Our own lease: deleted or expired under us → get it (or another) back now.
      if (ev.type === "delete") this.renewNow();
      return;
    }
    if (ev.type === "put") {
      const r = this.toRemote({ key: ev.key, value: ev.value, modRevision: ev.revision, leaseId: ev.leaseId });
      if (!r) return;
      for (const [key, old] of this.retained) {
        if (key !== r.key && !sameHost(old, r)) continue;
        this.retained.delete(key);
        if (key === r.key) continue;
        this.remotes.delete(key);
        this.reconciler?.removePeer(key);
      }
      this.remotes.set(r.key, r);
      this.reconciler?.upsertPeer(r);
    } else {
      this.retained.delete(ev.key);
      this.remotes.delete(ev.key);
      this.reconciler?.removePeer(ev.key);
    }
    this.metrics.peers.set(this.remotes.size);
    void this.reconciler?.trigger();
  }

  // ---------------------------------------------------------------- state for the API and the CNI plugin

  private writeRuntime(ready: boolean): void {
    const lease = this.lease;
    const subnets = lease ? [lease.subnet, ...(lease.subnetV6 ? [lease.subnetV6] : [])] : [];
    const gateways = subnets.map((s) => s.nth(1n));
    try {
      writeOverlayRuntime(this.config.runDir, {
        ready: ready && lease !== null,
        network: this.config.clusterCidrs.find((c) => !c.includes(":")),
        subnet: subnets[0] && String(subnets[0]),
        gateway: gateways[0],
        networks: [...this.config.clusterCidrs].sort((a, b) => Number(a.includes(":")) - Number(b.includes(":"))),
        subnets: subnets.map(String),
        gateways,
        mtu: this.mtu,
        vni: this.config.vni,
        device: this.deviceName,
        publicIP: this.underlay.publicIP,
        updatedAt: new Date().toISOString(),
      });
    } catch (e) {
      this.logger.error({ err: (e as Error).message }, "cannot write the overlay runtime file");
    }
  }

  readiness(): Readiness {
    const reasons: string[] = [];
    if (!this.lease) reasons.push(`no subnet lease held yet${this.leaseProblem ? `: ${this.leaseProblem}` : ""}`);
    if (!this.deviceReady) reasons.push(`${this.deviceName} not programmed yet`);
    if (!this.storeUp) reasons.push(`cluster store (${this.store.kind}) unreachable`);
    else if (this.lease && !this.watch) reasons.push("not watching the cluster's leases yet");
    if (this.stopped) reasons.push("stopping");
    return { ready: reasons.length === 0, reasons };
  }

  private updateReadyGauge(): void {
    this.metrics.ready.set(this.readiness().ready ? 1 : 0);
  }

  leaseView(): LeaseView | null {
    const l = this.lease;
    if (!l) return null;
    const v: LeaseView = {
      subnet: String(l.subnet),
      network: this.config.clusterCidrs.find((c) => !c.includes(":"))!,
      publicIP: l.value.publicIP,
      vtepMAC: l.value.vtepMAC,
      vni: l.value.vni,
      key: l.key,
      reservation: l.leaseId === null,
    };
    if (l.subnetV6) v.subnetV6 = String(l.subnetV6);
    const v6 = this.config.clusterCidrs.find((c) => c.includes(":"));
    if (v6) v.networkV6 = v6;
    return v;
  }

  peerViews(): PeerView[] {
    return [...this.remotes.values()]
      .map((r) => {
        const p: PeerView = {
          key: r.key,
          subnet: String(r.subnet),
          publicIP: r.publicIP,
          vtepMAC: r.vtepMAC,
          hostname: r.hostname,
        };
        if (r.subnetV6) p.subnetV6 = String(r.subnetV6);
        return p;
      })
      .sort((a, b) => (a.key < b.key ? -1 : 1));
  }

  private view(): AgentView {
    return {
      readiness: () => this.readiness(),
      lease: () => this.leaseView(),
      peers: () => this.peerViews(),
      status: () => ({
        device: this.deviceName,
        mtu: this.mtu,
        underlay: this.underlay,
        store: { kind: this.store.kind, up: this.storeUp },
        reconcile: this.reconciler?.stats ?? null,
      }),
    };
  }
}

function remoteOf(key: string, subnet: HostLease["subnet"], subnetV6: HostLease["subnetV6"], value: LeaseValue): RemoteHost {
  const r: RemoteHost = { key, subnet, publicIP: value.publicIP, vtepMAC: value.vtepMAC, hostname: value.hostname };
  if (subnetV6) r.subnetV6 = subnetV6;
  return r;
}

// ---------------------------------------------------------------- command entry points

async function runUntilSignal(config: AgentConfig, soleUnnamedIsCni: boolean): Promise<number> {
  let agent: Agent;
  try {
    // Socket activation: a CNI socket passed as "cni" (or, to `berth agent`, a single unnamed one).
    const cniListener = takeListener("cni", { soleUnnamed: soleUnnamedIsCni });
    agent = new Agent(config, { cniListener });
    await agent.start();
  } catch (e) {
    if (e instanceof AgentConfigError || e instanceof UnderlayError || e instanceof LeaseError || e instanceof ListenFdsError) {
      process.stderr.write(`berth agent: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  for (const p of untakenListeners())
    agent.logger.warn({ fd: p.fd, name: p.name }, 'a passed socket berth does not serve (expected "cni" or "csi")');
  const signal = await waitForStopSignal();
  agent.logger.info({ signal }, "stopping");
  await agent.stop();
  return 0;
}

function parseOrExplain(argv: string[], defaults?: Parameters<typeof parseAgentConfig>[1]): AgentConfig | number {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(AGENT_USAGE);
    return 0;
  }
  try {
    return parseAgentConfig(argv, defaults);
  } catch (e) {
    if (e instanceof AgentConfigError) {
      process.stderr.write(`berth agent: ${e.message}\n(see berth agent --help)\n`);
      return 2;
    }
    throw e;
  }
}

/** `berth agent [flags]`: runs the overlay agent until SIGINT/SIGTERM. */
export async function runAgentCommand(argv: string[]): Promise<number> {
  const config = parseOrExplain(argv);
  return typeof config === "number" ? config : runUntilSignal(config, true);
}

/** `berth up`: the agent on the embedded store with single-host defaults, in the foreground. */
export async function runUp(argv: string[]): Promise<number> {
  const config = parseOrExplain(argv, { store: "local", clusterCidrs: ["10.244.0.0/16"] });
  return typeof config === "number" ? config : runUntilSignal(config, false);
}
