// The Docker Engine's remote NetworkDriver and IpamDriver as a thin adapter over berth's CNI
// code: a Docker network is a berth bridge (ensureBridge, the same veth and link helpers as
// berth-bridge), its addresses are leases in berth's lease store (LeaseStore, host-local's
// ranges), and published ports are elements of berth's nftables portmap. Docker's model
// differs from CNI's in one way that shapes this file: the driver makes the veth pair on the
// host at CreateEndpoint and Docker itself moves one end into the container at Join.
//
// With -o berth.overlay=true a network sits on this host's subnet of the VXLAN overlay (the
// agent's lease, its MTU, berth-overlay's bridge and lease store), so containers on different
// hosts reach each other through the agent's routes.
//
// What Docker cannot tell us again after a restart (which bridge a network uses, an
// endpoint's address and published ports) is kept in a small SQLite database, and the
// start-up reconcile releases what Docker gave up on while the plugin was down.
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import Database from "better-sqlite3";
import type { Logger } from "pino";
import { isNetlinkError } from "../../native/netlink/error.ts";
import { writeSysctl } from "../../native/sysctl.ts";
import { formatIp, type Ip, Subnet, tryParseIp } from "../address/address.ts";
import { parseRangeSet, type RangeSet } from "../ipam/ranges.ts";
import { LeaseStore } from "../ipam/store.ts";
import { DEFAULT_TABLE } from "../nft/nft.ts";
import { addPortmap, type PortmapEntry, type Protocol, removePortmap } from "../nft/portmap.ts";
import { type BridgeConf, ensureBridge } from "../plugins/bridge/bridge.ts";
import { withRtnl } from "../plugins/container-netns.ts";
import { hostLinkName } from "../plugins/link-names.ts";
import { deleteLinkIfPresent } from "../plugins/link-removal.ts";
import { randomMac } from "../plugins/mac.ts";
import { CniError } from "../protocol/types.ts";

/** An error Docker shows to its user as it is ({"Err": message}). */
export class DockerNetworkError extends Error {
  constructor(
    message: string,
    readonly statusCode = 400,
  ) {
    super(message);
    this.name = "DockerNetworkError";
  }
}

const DOCKER_ID = /^[0-9a-f]{64}$/;
const GENERIC = "com.docker.network.generic";
const PORTMAP = "com.docker.network.portmap";
const GATEWAY_REQUEST = "com.docker.network.gateway";
const IFNAME = "eth0";
const KNOWN_NETWORK_OPTIONS = ["berth.bridge", "berth.mtu", "berth.overlay"];
/** The bridge berth-overlay's pods use: Docker's overlay containers share it (one subnet, one gateway per host). */
const OVERLAY_BRIDGE = "berth0";

/**
 * This host's part of the berth overlay, as the agent's runtime file says (bin/ reads it: the
 * overlay module sits above this one). Throws, with the reason, when there is no lease.
 */
export interface OverlayLease {
  subnet: string;
  gateway: string;
  mtu: number;
}
export type OverlayLookup = () => OverlayLease;

const PROTOCOLS: Record<number, Protocol> = { 6: "tcp", 17: "udp", 132: "sctp" };

function dockerId(what: string, id: unknown): string {
  if (typeof id !== "string" || !DOCKER_ID.test(id)) {
    throw new DockerNetworkError(`${what} ${JSON.stringify(String(id).slice(0, 80))} is not a Docker id (64 hex digits)`);
  }
  return id;
}

/** CNI and kernel failures as Docker errors: the message, never a stack. */
function asDockerError(what: string, e: unknown): DockerNetworkError {
  if (e instanceof DockerNetworkError) return e;
  if (e instanceof CniError) return new DockerNetworkError(`${what}: ${e.message}`, e.code >= 100 || e.code === 11 ? 500 : 400);
  return new DockerNetworkError(`${what}: ${e instanceof Error ? e.message : String(e)}`, 500);
}

// ---------------------------------------------------------------------------------------
// IPAM

/** Pools are named by their subnet; the lease store's network for a pool is this id. */
function poolId(subnet: Subnet): string {
  return `berth-pool:${subnet.toString()}`;
}

function poolSubnet(id: string): Subnet {
  const m = /^berth-pool:(.+)$/.exec(id);
  if (!m) throw new DockerNetworkError(`unknown pool ${JSON.stringify(id.slice(0, 80))}`, 404);
  try {
    return Subnet.parse(m[1]!);
  } catch {
    throw new DockerNetworkError(`unknown pool ${JSON.stringify(id.slice(0, 80))}`, 404);
  }
}

function rangeSetOf(subnet: Subnet): RangeSet {
  try {
    return parseRangeSet([{ subnet: subnet.toString() }], "Pool");
  } catch (e) {
    throw asDockerError("Pool", e);
  }
}

export interface RequestPool {
  AddressSpace?: string;
  Pool?: string;
  SubPool?: string;
  Options?: Record<string, string> | null;
  V6?: boolean;
}

/**
 * The lease stores: berth's IPAM store for plain networks, and berth-overlay's own store
 * (<overlay data dir>/ipam) for overlay pools, so that Docker's containers and the host's CNI
 * pods on the same host subnet never get the same address (one store, one address key).
 */
export class LeaseStores {
  private mainStore?: LeaseStore;
  private overlayStore?: LeaseStore;

  /** Each store is opened when a pool first needs it: a plugin serving only volumes touches neither. */
  constructor(
    private readonly ipamDir: string,
    private readonly overlayIpamDir?: string,
  ) {}

  forPool(overlay: boolean): LeaseStore {
    if (!overlay) {
      this.mainStore ??= LeaseStore.open(this.ipamDir);
      return this.mainStore;
    }
    if (!this.overlayIpamDir) throw new DockerNetworkError("no overlay data dir configured for overlay pools", 500);
    this.overlayStore ??= LeaseStore.open(this.overlayIpamDir);
    return this.overlayStore;
  }

  close(): void {
    this.mainStore?.close();
    this.overlayStore?.close();
  }
}

export class DockerIpam {
  constructor(
    private readonly stores: LeaseStores,
    private readonly state: NetworkState,
    private readonly log: Logger,
    private readonly overlay?: OverlayLookup,
  ) {}

  private storeOf(poolId: string): LeaseStore {
    return this.stores.forPool(this.state.poolIsOverlay(poolId));
  }

  private overlaySubnet(): string | undefined {
    try {
      return this.overlay?.().subnet;
    } catch {
      return undefined;
    }
  }

  requestPool(r: RequestPool): { PoolID: string; Pool: string; Data: Record<string, string> } {
    const chosen = !r.Pool;
    if (!r.Pool && !r.V6 && this.overlay) {
      // No subnet given: this host's overlay subnet, when the agent holds one.
      let lease: OverlayLease;
      try {
        lease = this.overlay();
      } catch (e) {
        throw new DockerNetworkError(
          `berth IPAM needs the network's subnet: docker network create --subnet CIDR, or a running berth agent for -o berth.overlay=true (${(e as Error).message})`,
        );
      }
      r = { ...r, Pool: lease.subnet };
    }
    if (!r.Pool) {
      throw new DockerNetworkError(
        `berth IPAM needs the network's subnet: docker network create --subnet CIDR${r.V6 ? " (and --ipv6 --subnet for IPv6)" : ""}`,
      );
    }
    if (r.SubPool) throw new DockerNetworkError("berth IPAM does not support --ip-range (SubPool); use the whole --subnet");
    let subnet: Subnet;
    try {
      subnet = Subnet.parse(r.Pool);
    } catch (e) {
      throw new DockerNetworkError(`Pool ${JSON.stringify(r.Pool.slice(0, 80))} is not a CIDR: ${(e as Error).message}`);
    }
    if ((subnet.family === 6) !== Boolean(r.V6)) throw new DockerNetworkError(`Pool ${subnet} is not IPv${r.V6 ? 6 : 4}`);
    if (subnet.toString() !== r.Pool) throw new DockerNetworkError(`Pool ${r.Pool} has host bits set; did you mean ${subnet}?`);
    rangeSetOf(subnet);
    const id = poolId(subnet);
    const overlay = this.overlaySubnet() === subnet.toString();
    if (!this.state.addPool(id, overlay)) {
      if (overlay && chosen) {
        // Docker checks a pool it did not name against the host's routes, and asks again when
        // one overlaps: here berth-overlay's bridge already routes the subnet (CNI pods, or
        // another Docker overlay network). Only a pool the user names skips that check.
        throw new DockerNetworkError(
          `this host's overlay subnet ${subnet} is already routed here (berth-overlay's bridge), so Docker asked for another pool; name it: --subnet ${subnet}`,
          409,
        );
      }
      throw new DockerNetworkError(`pool ${subnet} is already in use by another network`, 409);
    }
    this.log.info({ pool: id, overlay }, "docker IPAM pool requested");
    return { PoolID: id, Pool: subnet.toString(), Data: {} };
  }

  releasePool(id: string): void {
    poolSubnet(id);
    const dropped = this.state.hasPool(id) ? this.storeOf(id).gc(id, []) : [];
    this.state.removePool(id);
    this.log.info({ pool: id, leases: dropped.length }, "docker IPAM pool released");
  }

  requestAddress(r: { PoolID: string; Address?: string; Options?: Record<string, string> | null }): {
    Address: string;
    Data: object;
  } {
    const subnet = poolSubnet(r.PoolID);
    if (!this.state.hasPool(r.PoolID)) throw new DockerNetworkError(`unknown pool ${r.PoolID}`, 404);
    const set = rangeSetOf(subnet);
    const range = set.ranges[0]!;
    let requested: Ip | undefined;
    if (r.Address) {
      const ip = tryParseIp(r.Address);
      if (!ip) throw new DockerNetworkError(`Address ${JSON.stringify(r.Address.slice(0, 80))} is not an IP address`);
      if (!subnet.contains(ip)) throw new DockerNetworkError(`Address ${r.Address} is outside pool ${subnet}`);
      requested = ip;
    }
    const prefix = `/${subnet.prefix}`;
    if (r.Options?.RequestAddressType === GATEWAY_REQUEST) {
      // The range's gateway is never leased (host-local's rule); only that address can be it.
      if (requested && requested.value !== range.gateway) {
        throw new DockerNetworkError(
          `berth IPAM's gateway of ${subnet} is ${formatValue(subnet, range.gateway)}; --gateway must be that address`,
        );
      }
      return { Address: `${formatValue(subnet, range.gateway)}${prefix}`, Data: {} };
    }
    // Docker names no owner here: each address is its own owner until ReleaseAddress.
    const owner = { network: r.PoolID, containerId: `docker-${randomUUID()}`, ifname: IFNAME };
    try {
      const [lease] = this.storeOf(r.PoolID).allocate(owner, [set], requested ? [requested] : []);
      return { Address: `${lease!.address}${prefix}`, Data: {} };
    } catch (e) {
      throw asDockerError("RequestAddress", e);
    }
  }

  releaseAddress(r: { PoolID: string; Address: string }): void {
    poolSubnet(r.PoolID);
    const ip = tryParseIp(r.Address.split("/")[0] ?? "");
    if (!ip) throw new DockerNetworkError(`Address ${JSON.stringify(r.Address.slice(0, 80))} is not an IP address`);
    if (!this.state.hasPool(r.PoolID)) return;
    const store = this.storeOf(r.PoolID);
    const lease = store.leaseAt(ip);
    if (lease && lease.network === r.PoolID) store.release(lease);
  }
}

function formatValue(subnet: Subnet, value: bigint): string {
  return formatIp({ family: subnet.family, value });
}

// ---------------------------------------------------------------------------------------
// State

interface NetworkRow {
  id: string;
  bridge: string;
  gateway: string;
  mtu: number;
  overlay: number;
  /** The IPAM pool id of its subnet (its leases are released with its endpoints). */
  pool: string;
}

interface EndpointRow {
  id: string;
  network: string;
  host: string;
  peer: string;
  address: string;
  mac: string;
  ports: string;
}

/** Networks, endpoints and pools Docker asked for, kept across restarts. */
export class NetworkState {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = FULL");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS pools (id TEXT PRIMARY KEY, overlay INTEGER NOT NULL DEFAULT 0);
      CREATE TABLE IF NOT EXISTS networks (id TEXT PRIMARY KEY, bridge TEXT NOT NULL UNIQUE, gateway TEXT NOT NULL, mtu INTEGER NOT NULL,
        overlay INTEGER NOT NULL DEFAULT 0, pool TEXT NOT NULL DEFAULT '');
      CREATE TABLE IF NOT EXISTS endpoints (id TEXT PRIMARY KEY, network TEXT NOT NULL, host TEXT NOT NULL, peer TEXT NOT NULL,
        address TEXT NOT NULL, mac TEXT NOT NULL, ports TEXT NOT NULL DEFAULT '[]');`);
  }

  close(): void {
    this.db.close();
  }

  addPool(id: string, overlay: boolean): boolean {
    return this.db.prepare("INSERT OR IGNORE INTO pools VALUES (?, ?)").run(id, overlay ? 1 : 0).changes > 0;
  }
  poolIsOverlay(id: string): boolean {
    return (this.db.prepare("SELECT overlay FROM pools WHERE id = ?").get(id) as { overlay: number } | undefined)?.overlay === 1;
  }
  hasPool(id: string): boolean {
    return this.db.prepare("SELECT 1 FROM pools WHERE id = ?").get(id) !== undefined;
  }
  removePool(id: string): void {
    this.db.prepare("DELETE FROM pools WHERE id = ?").run(id);
  }

  network(id: string): NetworkRow | undefined {
    return this.db.prepare("SELECT * FROM networks WHERE id = ?").get(id) as NetworkRow | undefined;
  }
  networkByBridge(bridge: string): NetworkRow | undefined {
    return this.db.prepare("SELECT * FROM networks WHERE bridge = ?").get(bridge) as NetworkRow | undefined;
  }
  putNetwork(n: NetworkRow): void {
    this.db
      .prepare("INSERT OR REPLACE INTO networks VALUES (?, ?, ?, ?, ?, ?)")
      .run(n.id, n.bridge, n.gateway, n.mtu, n.overlay, n.pool);
  }
  networkPool(id: string): string | undefined {
    return this.network(id)?.pool || undefined;
  }
  deleteNetwork(id: string): void {
    this.db.prepare("DELETE FROM networks WHERE id = ?").run(id);
  }

  endpoint(id: string): EndpointRow | undefined {
    return this.db.prepare("SELECT * FROM endpoints WHERE id = ?").get(id) as EndpointRow | undefined;
  }
  networks(): NetworkRow[] {
    return this.db.prepare("SELECT * FROM networks").all() as NetworkRow[];
  }
  endpoints(): EndpointRow[] {
    return this.db.prepare("SELECT * FROM endpoints").all() as EndpointRow[];
  }
  endpointsOf(network: string): EndpointRow[] {
    return this.db.prepare("SELECT * FROM endpoints WHERE network = ?").all(network) as EndpointRow[];
  }
  putEndpoint(e: EndpointRow): void {
    this.db
      .prepare("INSERT OR REPLACE INTO endpoints VALUES (?, ?, ?, ?, ?, ?, ?)")
      .run(e.id, e.network, e.host, e.peer, e.address, e.mac, e.ports);
  }
  deleteEndpoint(id: string): void {
    this.db.prepare("DELETE FROM endpoints WHERE id = ?").run(id);
  }
}

// ---------------------------------------------------------------------------------------
// NetworkDriver

export interface CreateNetwork {
  NetworkID: string;
  Options?: Record<string, unknown> | null;
  IPv4Data?: { AddressSpace?: string; Pool: string; Gateway?: string; AuxAddresses?: Record<string, string> | null }[] | null;
  IPv6Data?: unknown[] | null;
}

export interface CreateEndpoint {
  NetworkID: string;
  EndpointID: string;
  Interface?: { Address?: string; AddressIPv6?: string; MacAddress?: string } | null;
  Options?: Record<string, unknown> | null;
}

interface DockerPortBinding {
  Proto: number;
  IP?: string;
  Port: number;
  HostIP?: string;
  HostPort: number;
  HostPortEnd?: number;
}

/** The bridge of a network: named by the berth.bridge option, else from the network id. */
function bridgeName(networkId: string, generic: Record<string, unknown>): string {
  const given = generic["berth.bridge"];
  if (given === undefined) return `bd${networkId.slice(0, 12)}`;
  if (typeof given !== "string" || !/^[A-Za-z0-9_.-]{1,15}$/.test(given)) {
    throw new DockerNetworkError(
      `option berth.bridge must be an interface name of 1-15 characters, got ${JSON.stringify(String(given).slice(0, 40))}`,
    );
  }
  return given;
}

export class DockerNetworks {
  constructor(
    private readonly state: NetworkState,
    private readonly log: Logger,
    private readonly nftTable = DEFAULT_TABLE,
    private readonly overlay?: OverlayLookup,
  ) {}

  /** This host's overlay lease when its subnet is `pool`, else undefined. */
  private overlayFor(pool: string): OverlayLease | undefined {
    try {
      const lease = this.overlay?.();
      return lease?.subnet === pool ? lease : undefined;
    } catch {
      return undefined;
    }
  }

  async createNetwork(r: CreateNetwork): Promise<void> {
    const id = dockerId("NetworkID", r.NetworkID);
    const generic = (r.Options?.[GENERIC] ?? {}) as Record<string, unknown>;
    if (typeof generic !== "object" || generic === null || Array.isArray(generic))
      throw new DockerNetworkError(`option ${GENERIC} must be an object`);
    const unknown = Object.keys(generic).filter((k) => !KNOWN_NETWORK_OPTIONS.includes(k));
    if (unknown.length > 0) {
      throw new DockerNetworkError(
        `unknown network option${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => JSON.stringify(k.slice(0, 64))).join(", ")} (known: ${KNOWN_NETWORK_OPTIONS.join(", ")})`,
      );
    }
    if (r.IPv6Data && r.IPv6Data.length > 0) throw new DockerNetworkError("berth Docker networks are IPv4 only for now");
    const v4 = r.IPv4Data ?? [];
    if (v4.length !== 1) throw new DockerNetworkError(`a berth network takes exactly one IPv4 subnet, got ${v4.length}`);
    const gateway = v4[0]!.Gateway ?? "";
    if (!gateway || !tryParseIp(gateway.split("/")[0] ?? ""))
      throw new DockerNetworkError(`IPv4Data[0].Gateway ${JSON.stringify(gateway)} is not an address with a prefix`);
    const overlayOpt = generic["berth.overlay"];
    if (overlayOpt !== undefined && overlayOpt !== "true" && overlayOpt !== "false")
      throw new DockerNetworkError(
        `option berth.overlay must be "true" or "false", got ${JSON.stringify(String(overlayOpt).slice(0, 40))}`,
      );
    const pool = v4[0]!.Pool;
    const lease = this.overlayFor(pool);
    const isOverlay = overlayOpt === "true";
    if (isOverlay) {
      if (!this.overlay)
        throw new DockerNetworkError("berth.overlay=true needs the plugin to know the agent's run dir (--overlay-run-dir)");
      let held: OverlayLease;
      try {
        held = this.overlay();
      } catch (e) {
        throw new DockerNetworkError(`berth.overlay=true: no overlay lease on this host: ${(e as Error).message}`);
      }
      if (held.subnet !== pool)
        throw new DockerNetworkError(
          `berth.overlay=true: the subnet must be this host's overlay subnet ${held.subnet} (leave out --subnet and use --ipam-driver berth), got ${pool}`,
        );
      if (gateway !== `${held.gateway}/${pool.split("/")[1]}`)
        throw new DockerNetworkError(`berth.overlay=true: the gateway must be ${held.gateway}, got ${gateway}`);
      if (generic["berth.mtu"] !== undefined)
        throw new DockerNetworkError("berth.mtu cannot be set on an overlay network: the overlay decides it");
    } else if (lease) {
      throw new DockerNetworkError(`${pool} is this host's overlay subnet: add -o berth.overlay=true, or give another --subnet`);
    }
    let mtu = isOverlay ? (lease?.mtu ?? 1450) : 1500;
    if (generic["berth.mtu"] !== undefined) {
      mtu = Number(generic["berth.mtu"]);
      if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535)
        throw new DockerNetworkError(`option berth.mtu must be an integer 68-65535, got ${JSON.stringify(generic["berth.mtu"])}`);
    }
    const bridge = isOverlay && generic["berth.bridge"] === undefined ? OVERLAY_BRIDGE : bridgeName(id, generic);
    const other = this.state.networkByBridge(bridge);
    if (other && other.id !== id)
      throw new DockerNetworkError(`bridge ${bridge} already serves network ${other.id.slice(0, 12)}`, 409);
    let subnet: Subnet;
    try {
      subnet = Subnet.parse(pool);
    } catch (e) {
      throw new DockerNetworkError(
        `IPv4Data[0].Pool ${JSON.stringify(pool.slice(0, 80))} is not a CIDR: ${(e as Error).message}`,
      );
    }
    this.state.putNetwork({ id, bridge, gateway, mtu, overlay: isOverlay ? 1 : 0, pool: poolId(subnet) });
    try {
      await withRtnl(undefined, (nl) => {
        const existed = nl.linkGet(bridge);
        // An overlay network shares berth-overlay's bridge with the host's CNI pods.
        if (existed && !other && !isOverlay)
          throw new DockerNetworkError(`a link named ${bridge} already exists and is not berth's`, 409);
        const br = ensureBridge(nl, { bridge, mtu, promiscMode: false, vlan: undefined } as BridgeConf, existed);
        try {
          nl.addrAdd(br.index, { cidr: gateway, broadcast: "auto" });
        } catch (e) {
          if (!isNetlinkError(e, "EEXIST")) throw e;
        }
      });
      writeSysctl("net.ipv4.ip_forward", "1");
    } catch (e) {
      if (!other) {
        await withRtnl(undefined, (nl) => deleteLinkIfPresent(nl, bridge)).catch(() => {});
        this.state.deleteNetwork(id);
      }
      throw asDockerError(`create bridge ${bridge}`, e);
    }
    this.log.info({ network: id, bridge, gateway, overlay: isOverlay }, "docker network created");
  }

  private networkOf(id: string): NetworkRow {
    const n = this.state.network(dockerId("NetworkID", id));
    if (!n) throw new DockerNetworkError(`no such network: ${id.slice(0, 12)}`, 404);
    return n;
  }

  async deleteNetwork(id: string): Promise<void> {
    dockerId("NetworkID", id);
    const n = this.state.network(id);
    if (!n) return;
    const left = this.state.endpointsOf(id);
    if (left.length > 0) throw new DockerNetworkError(`network ${id.slice(0, 12)} still has ${left.length} endpoint(s)`, 409);
    await withRtnl(undefined, async (nl) => {
      // An overlay bridge stays while berth-overlay's pods use it.
      const br = nl.linkGet(n.bridge);
      if (n.overlay && br && nl.linkList().some((l) => l.masterIndex === br.index)) return;
      await deleteLinkIfPresent(nl, n.bridge);
    }).catch((e) => {
      throw asDockerError(`delete bridge ${n.bridge}`, e);
    });
    this.state.deleteNetwork(id);
    this.log.info({ network: id, bridge: n.bridge }, "docker network deleted");
  }

  async createEndpoint(r: CreateEndpoint): Promise<{ Interface: { MacAddress?: string } | null }> {
    const n = this.networkOf(r.NetworkID);
    const id = dockerId("EndpointID", r.EndpointID);
    const address = r.Interface?.Address ?? "";
    if (!address || !tryParseIp(address.split("/")[0] ?? ""))
      throw new DockerNetworkError(`Interface.Address ${JSON.stringify(address)} is not an IPv4 address with a prefix`);
    if (r.Interface?.AddressIPv6) throw new DockerNetworkError("berth Docker networks are IPv4 only for now");
    const given = r.Interface?.MacAddress ?? "";
    if (given && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(given))
      throw new DockerNetworkError(`Interface.MacAddress ${JSON.stringify(given)} is not a MAC address`);
    const mac = given || randomMac();
    const host = hostLinkName("bv", n.id, id, IFNAME);
    // The end Docker moves into the container: same hash, its own prefix.
    const peer = `bc${host.slice(2)}`;
    this.state.putEndpoint({ id, network: n.id, host, peer, address, mac, ports: "[]" });
    try {
      await withRtnl(undefined, async (nl) => {
        const br = nl.linkGet(n.bridge);
        if (br?.kind !== "bridge")
          throw new DockerNetworkError(`bridge ${n.bridge} of network ${n.id.slice(0, 12)} is missing`, 500);
        await deleteLinkIfPresent(nl, host); // left by a crash between these two steps
        await nl.linkAddAsync({
          kind: "veth",
          name: host,
          mtu: n.mtu,
          mac: randomMac(),
          master: br.index,
          up: true,
          peer: { name: peer, mtu: n.mtu, mac },
        });
      });
    } catch (e) {
      await withRtnl(undefined, (nl) => deleteLinkIfPresent(nl, host)).catch(() => {});
      this.state.deleteEndpoint(id);
      throw asDockerError(`create veth ${host}`, e);
    }
    this.log.info({ endpoint: id, host, address }, "docker endpoint created");
    return { Interface: given ? null : { MacAddress: mac } };
  }

  async deleteEndpoint(networkId: string, endpointId: string): Promise<void> {
    dockerId("NetworkID", networkId);
    dockerId("EndpointID", endpointId);
    const e = this.state.endpoint(endpointId);
    const host = e?.host ?? hostLinkName("bv", networkId, endpointId, IFNAME);
    await removePortmap({ network: networkId, containerId: endpointId, ifname: IFNAME }, this.nftTable).catch((err) => {
      throw asDockerError("remove port mappings", err);
    });
    await withRtnl(undefined, (nl) => deleteLinkIfPresent(nl, host)).catch((err) => {
      throw asDockerError(`delete veth ${host}`, err);
    });
    this.state.deleteEndpoint(endpointId);
    this.log.info({ endpoint: endpointId, host }, "docker endpoint deleted");
  }

  private endpointOf(networkId: string, endpointId: string): EndpointRow {
    dockerId("NetworkID", networkId);
    const e = this.state.endpoint(dockerId("EndpointID", endpointId));
    if (!e || e.network !== networkId) throw new DockerNetworkError(`no such endpoint: ${endpointId.slice(0, 12)}`, 404);
    return e;
  }

  endpointInfo(networkId: string, endpointId: string): { Value: Record<string, string> } {
    const e = this.endpointOf(networkId, endpointId);
    return { Value: { "berth.hostInterface": e.host, "berth.address": e.address } };
  }

  join(networkId: string, endpointId: string, sandboxKey: string) {
    const e = this.endpointOf(networkId, endpointId);
    if (!sandboxKey.startsWith("/"))
      throw new DockerNetworkError(`SandboxKey ${JSON.stringify(sandboxKey.slice(0, 80))} is not a path`);
    const n = this.networkOf(networkId);
    return {
      InterfaceName: { SrcName: e.peer, DstPrefix: "eth" },
      Gateway: n.gateway.split("/")[0]!,
      StaticRoutes: [],
      DisableGatewayService: false,
    };
  }

  leave(networkId: string, endpointId: string): void {
    this.endpointOf(networkId, endpointId);
  }

  async programExternalConnectivity(networkId: string, endpointId: string, options: Record<string, unknown>): Promise<void> {
    const e = this.endpointOf(networkId, endpointId);
    const raw = options[PORTMAP];
    if (raw === undefined || raw === null) return;
    if (!Array.isArray(raw)) throw new DockerNetworkError(`option ${PORTMAP} must be a list`);
    const pod = e.address.split("/")[0]!;
    const entries: PortmapEntry[] = [];
    for (const [i, b] of (raw as DockerPortBinding[]).entries()) {
      const protocol = PROTOCOLS[b?.Proto];
      if (!protocol)
        throw new DockerNetworkError(`${PORTMAP}[${i}].Proto ${JSON.stringify(b?.Proto)} is not tcp (6), udp (17) or sctp (132)`);
      for (const [k, v] of [
        ["Port", b.Port],
        ["HostPort", b.HostPort],
      ] as const) {
        if (!Number.isInteger(v) || v < 1 || v > 65535)
          throw new DockerNetworkError(`${PORTMAP}[${i}].${k} must be a port 1-65535, got ${JSON.stringify(v)}`);
      }
      if (b.HostPortEnd && b.HostPortEnd !== b.HostPort)
        throw new DockerNetworkError(`${PORTMAP}[${i}]: host port ranges are not supported; publish one port`);
      const hostIP = b.HostIP && b.HostIP !== "0.0.0.0" ? b.HostIP : undefined;
      if (hostIP && !tryParseIp(hostIP))
        throw new DockerNetworkError(`${PORTMAP}[${i}].HostIP ${JSON.stringify(hostIP)} is not an address`);
      if (hostIP?.includes(":")) continue; // an IPv6 host address cannot reach an IPv4-only endpoint
      entries.push({ family: 4, protocol, hostPort: b.HostPort, hostIP, pod, containerPort: b.Port });
    }
    try {
      // As berth-portmap does: the host's own 127.0.0.1:hostPort reaches the container
      // (snat masquerades it) once the bridge may route loopback sources.
      if (entries.length > 0) writeSysctl(["net", "ipv4", "conf", this.networkOf(networkId).bridge, "route_localnet"], "1");
      await addPortmap(
        { network: networkId, containerId: endpointId, ifname: IFNAME },
        entries,
        { snat: true, masqAll: false },
        this.nftTable,
      );
    } catch (err) {
      await removePortmap({ network: networkId, containerId: endpointId, ifname: IFNAME }, this.nftTable).catch(() => {});
      throw asDockerError("publish ports", err);
    }
    this.state.putEndpoint({ ...e, ports: JSON.stringify(entries) });
  }

  async revokeExternalConnectivity(networkId: string, endpointId: string): Promise<void> {
    const e = this.endpointOf(networkId, endpointId);
    await removePortmap({ network: networkId, containerId: endpointId, ifname: IFNAME }, this.nftTable).catch((err) => {
      throw asDockerError("remove port mappings", err);
    });
    this.state.putEndpoint({ ...e, ports: "[]" });
  }
}

export interface DockerNetworking {
  ipam: DockerIpam;
  networks: DockerNetworks;
  close(): void;
}

/** Opens the lease store (berth's IPAM data dir) and the network state in `dockerDir`, and reconciles them with the kernel. */
export async function openDockerNetworking(options: {
  ipamDir: string;
  dockerDir: string;
  nftTable?: string;
  overlay?: OverlayLookup;
  /** berth-overlay's lease store (<overlay data dir>/ipam), for overlay pools. */
  overlayIpamDir?: string;
  log: Logger;
}): Promise<DockerNetworking> {
  const leases = new LeaseStores(options.ipamDir, options.overlayIpamDir);
  const state = new NetworkState(join(options.dockerDir, "network.db"));
  const networks = new DockerNetworks(state, options.log, options.nftTable, options.overlay);
  try {
    await reconcileNetworks(state, leases, options.nftTable ?? DEFAULT_TABLE, options.log);
  } catch (e) {
    state.close();
    leases.close();
    throw e;
  }
  return {
    ipam: new DockerIpam(leases, state, options.log, options.overlay),
    networks,
    close() {
      state.close();
      leases.close();
    },
  };
}

/**
 * Start-up repair. A bridge that went (a reboot) is made again with its gateway. An endpoint
 * no running container holds lost its container while the plugin was down: Docker, unable to
 * reach the plugin, gave up on DeleteEndpoint and ReleaseAddress for good. Its veth pair,
 * port mappings, lease and row go here.
 */
async function reconcileNetworks(state: NetworkState, stores: LeaseStores, table: string, log: Logger): Promise<void> {
  await withRtnl(undefined, async (nl) => {
    for (const n of state.networks()) {
      const br = nl.linkGet(n.bridge);
      if (br?.kind === "bridge" && nl.addrList({ ifindex: br.index }).some((a) => a.cidr === n.gateway)) continue;
      try {
        const made = ensureBridge(nl, { bridge: n.bridge, mtu: n.mtu, promiscMode: false, vlan: undefined } as BridgeConf, br);
        try {
          nl.addrAdd(made.index, { cidr: n.gateway, broadcast: "auto" });
        } catch (e) {
          if (!isNetlinkError(e, "EEXIST")) throw e;
        }
        log.warn({ network: n.id, bridge: n.bridge }, "docker network's bridge restored");
      } catch (e) {
        log.error({ network: n.id, bridge: n.bridge, err: (e as Error).message }, "could not restore a docker network's bridge");
      }
    }
    for (const e of state.endpoints()) {
      // Joined and in use: the host end is here and its peer is inside a container's netns.
      // Docker moves the peer back out when it destroys a sandbox, so a peer here means no
      // container holds the endpoint (this runs before the socket serves: no Join is under way).
      if (nl.linkGet(e.host) && !nl.linkGet(e.peer)) continue;
      try {
        await deleteLinkIfPresent(nl, e.host);
        await removePortmap({ network: e.network, containerId: e.id, ifname: IFNAME }, table);
        const ip = tryParseIp(e.address.split("/")[0] ?? "");
        const pool = state.networkPool(e.network);
        if (ip && pool) {
          const store = stores.forPool(state.poolIsOverlay(pool));
          const lease = store.leaseAt(ip);
          if (lease?.network === pool) store.release(lease);
        }
        state.deleteEndpoint(e.id);
        log.warn(
          { endpoint: e.id, address: e.address },
          "docker endpoint of a container removed while the plugin was down: released",
        );
      } catch (err) {
        log.error({ endpoint: e.id, err: (err as Error).message }, "could not release a stale docker endpoint");
      }
    }
  });
}
