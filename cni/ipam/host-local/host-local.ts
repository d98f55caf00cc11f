// berth-host-local: host-local's config and behaviour on the SQLite lease store, plus what
// host-local lacks: idempotent re-ADD, GC of leaked leases, and STATUS that reports an
// exhausted pool or an unwritable store as 50 before a pod's ADD fails on it.
import { existsSync, statSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { type AddressError, formatIp, type Ip, parseIp } from "../../address/address.ts";
import { gcAttachments, requestedIps } from "../../protocol/config.ts";
import { goFields } from "../../protocol/schema.ts";
import { CniError, ErrorCode, type IpConfig, type Plugin, type Request, type Result } from "../../protocol/types.ts";
import {
  DEFAULT_DATA_DIR,
  findRange,
  HOST_LOCAL_KEYS,
  type HostLocalConfig,
  hostLocalSchema,
  parseHostLocalConfig,
  type RangeSet,
} from "../ranges.ts";
import { DATABASE_FILE, IpamErrorCode, type Lease, type LeaseOwner, LeaseStore } from "../store.ts";

function ipamSection(req: Request): Record<string, unknown> {
  const ipam = req.config.ipam;
  if (typeof ipam !== "object" || ipam === null)
    throw new CniError(ErrorCode.InvalidConfig, `invalid config: "ipam" is required`);
  return ipam;
}

function configOf(req: Request): HostLocalConfig {
  return parseHostLocalConfig(ipamSection(req), req.config.runtimeConfig);
}

/**
 * DEL and GC must work even when the ranges in the config no longer parse: they only need the
 * directory. An absolute one with "." or ".." segments (ADD refuses those now; older berth
 * accepted them) is normalised, so leases made before are still released. Undefined when it
 * is not an absolute path at all: no ADD ever used it.
 */
function dataDirOf(req: Request): string | undefined {
  const dir = goFields(ipamSection(req), HOST_LOCAL_KEYS).dataDir;
  if (dir === undefined || dir === null) return DEFAULT_DATA_DIR;
  return typeof dir === "string" && isAbsolute(dir) && !dir.includes("\0") ? resolve(dir) : undefined;
}

function ownerOf(req: Request): LeaseOwner {
  return { network: req.config.name, containerId: req.containerId, ifname: req.ifname };
}

// One open handle per database file (and sync mode), reused by the agent's in-process calls.
// Reopened when the file was replaced (a new inode), so a handle never points at a deleted database.
const openStores = new Map<string, { store: LeaseStore; ino: number }>();

/** The store in `dataDir`, committing as the invocation's host says (InvocationHost.deferSyncs). */
function storeFor(dataDir: string, req: Request): LeaseStore {
  const path = join(dataDir, DATABASE_FILE);
  const deferSyncs = req.host.deferSyncs;
  const key = deferSyncs ? `${path}\0deferred` : path;
  const cached = openStores.get(key);
  const ino = existsSync(path) ? statSync(path).ino : -1;
  if (cached && cached.ino === ino) return cached.store;
  cached?.store.close();
  const store = LeaseStore.open(dataDir, { deferSyncs });
  openStores.set(key, { store, ino: statSync(path).ino });
  return store;
}

/** Closes every cached database handle (agent shutdown, tests). */
export function closeLeaseStores(): void {
  for (const { store } of openStores.values()) store.close();
  openStores.clear();
}

function requested(req: Request): Ip[] {
  return requestedIps(req).map((text) => {
    try {
      return parseIp(text.split("/")[0]!);
    } catch (e) {
      throw new CniError(ErrorCode.InvalidConfig, `invalid requested IP: ${(e as AddressError).message}`);
    }
  });
}

function ipConfig(lease: Lease, rangeSets: readonly RangeSet[]): IpConfig {
  const hit = findRange(rangeSets, lease.ip)!;
  return {
    address: `${lease.address}/${hit.range.subnet.prefix}`,
    gateway: formatIp(hit.range.subnet.ip(hit.range.gateway)),
  };
}

function bareAddress(cidr: string): string | null {
  try {
    return formatIp(parseIp(cidr.split("/")[0]!));
  } catch {
    return null;
  }
}

export const hostLocalPlugin: Plugin = {
  name: "berth-host-local",
  cniArgs: ["IP"],
  schema: hostLocalSchema,

  async add(req: Request): Promise<Result> {
    const config = configOf(req);
    const store = storeFor(config.dataDir, req);
    const wanted = requested(req);
    const leases = await store.grouped(() => store.allocate(ownerOf(req), config.rangeSets, wanted), req.pendingSync);
    // A delegated IPAM result is trimmed: no interfaces, no ips[].interface (SPEC).
    const result: Result = { cniVersion: req.config.cniVersion, ips: leases.map((l) => ipConfig(l, config.rangeSets)) };
    if (config.routes.length > 0) result.routes = config.routes;
    if (config.dns) result.dns = config.dns;
    return result;
  },

  async del(req: Request): Promise<void> {
    const dataDir = dataDirOf(req);
    // Nothing was ever allocated here: do not create a database just to find it empty.
    if (dataDir === undefined || !existsSync(join(dataDir, DATABASE_FILE))) return;
    const store = storeFor(dataDir, req);
    await store.grouped(() => store.release(ownerOf(req)), req.pendingSync);
  },

  async check(req: Request): Promise<void> {
    const config = configOf(req);
    const owner = ownerOf(req);
    const leases = storeFor(config.dataDir, req).leasesOf(owner);
    const where = `container ${owner.containerId} interface ${owner.ifname} in network ${owner.network}`;
    if (leases.length === 0) throw new CniError(IpamErrorCode.CheckFailed, `no address is leased to ${where}`);
    for (const [i, set] of config.rangeSets.entries()) {
      if (!leases.some((l) => l.rangeSet === i && findRange([set], l.ip))) {
        throw new CniError(IpamErrorCode.CheckFailed, `${where} holds no address in range set ${i}`);
      }
    }
    const prev = req.config.prevResult?.ips;
    if (prev) {
      const reported = new Set(prev.map((ip) => bareAddress(ip.address)));
      for (const lease of leases) {
        if (!reported.has(lease.address)) {
          throw new CniError(IpamErrorCode.CheckFailed, `${lease.address} is leased to ${where} but missing from prevResult.ips`);
        }
      }
    }
  },

  async gc(req: Request): Promise<void> {
    const dataDir = dataDirOf(req);
    const keep = gcAttachments(req.config);
    if (dataDir === undefined || !existsSync(join(dataDir, DATABASE_FILE))) return;
    storeFor(dataDir, req).gc(req.config.name, keep);
  },

  async status(req: Request): Promise<void> {
    const config = configOf(req);
    let store: LeaseStore;
    try {
      store = storeFor(config.dataDir, req);
      store.probeWritable();
    } catch (e) {
      throw new CniError(ErrorCode.PluginNotAvailable, `lease store unavailable: ${(e as Error).message}`);
    }
    let exhausted: number[];
    try {
      exhausted = store.exhaustedRangeSets(req.config.name, config.rangeSets);
    } catch (e) {
      throw new CniError(ErrorCode.PluginNotAvailable, `lease store unavailable: ${(e as Error).message}`);
    }
    if (exhausted.length > 0) {
      const which = exhausted.map((i) => `range set ${i} (${config.rangeSets[i]!.ranges.map((r) => r.subnet).join(", ")})`);
      throw new CniError(ErrorCode.PluginNotAvailable, `no free address in ${which.join(" and ")} of network ${req.config.name}`);
    }
  },
};
