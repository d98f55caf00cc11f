// Subnet leases: each host holds one /subnetLen of the cluster network (plus, dual-stack, the
// IPv6 subnet with the same index) under `<prefix>/subnets/<net>-<len>[&<net6>-<len6>]`
// (flannel's key format). The value says how to reach the host's VTEP.
//
// Better than flannel: the host identity (a random id) and the VTEP MAC are persisted in the
// state dir, so a restart, even after the lease expired, gets the same subnet and MAC back and
// peers never see a stale MAC; losing the lease (expiry, deletion) re-acquires instead of exiting.

import { randomBytes, randomUUID } from "node:crypto";
import { hostname as osHostname } from "node:os";
import { join } from "node:path";
import { ipFamily, parseIp, Subnet } from "../cni/address/address.ts";
import { readSmallFile } from "../cni/protocol/files.ts";
import { writeFileAtomic } from "./atomic-file.ts";
import type { ClusterStore, StoreEntry } from "./store/store.ts";

/** What a lease tells the other hosts. */
export interface LeaseValue {
  /** Underlay address the VXLAN packets go to (IPv4 or IPv6). */
  publicIP: string;
  /** The host's IPv6 underlay address, when it has one besides an IPv4 publicIP (informational). */
  publicIPv6?: string;
  vtepMAC: string;
  vni: number;
  hostname: string;
  /** The persisted random identity of the host that holds the lease. */
  hostId?: string;
}

export interface HostLease {
  key: string;
  subnet: Subnet;
  subnetV6?: Subnet;
  value: LeaseValue;
  modRevision: number;
  /** The TTL lease; null for a reservation (a key without TTL, never handed out to others). */
  leaseId: string | null;
}

export interface NetworkConfig {
  network: Subnet;
  subnetLen: number;
  networkV6?: Subnet;
  subnetLenV6?: number;
}

export class LeaseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LeaseError";
  }
}

const MAC_RE = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/;

/** Checks a network config and fills in the defaults (/24 and /64). */
export function networkConfig(cidrs: string[], subnetLen?: number, subnetLenV6?: number): NetworkConfig {
  const parsed = cidrs.map((c) => Subnet.parse(c));
  const v4 = parsed.filter((c) => c.family === 4);
  const v6 = parsed.filter((c) => c.family === 6);
  if (v4.length !== 1 || v6.length > 1) {
    throw new LeaseError(
      `cluster CIDRs: need exactly one IPv4 network and at most one IPv6 network, got ${cidrs.join(", ") || "none"}`,
    );
  }
  const network = v4[0]!;
  const len = subnetLen ?? (network.prefix <= 22 ? 24 : network.prefix + 2);
  if (!Number.isInteger(len) || len <= network.prefix || len > 30) {
    throw new LeaseError(`subnet length /${len} does not fit ${network} (need /${network.prefix + 1}../30)`);
  }
  const config: NetworkConfig = { network, subnetLen: len };
  if (v6[0]) {
    const lenV6 = subnetLenV6 ?? 64;
    if (!Number.isInteger(lenV6) || lenV6 <= v6[0].prefix || lenV6 > 126) {
      throw new LeaseError(`IPv6 subnet length /${lenV6} does not fit ${v6[0]}`);
    }
    // The IPv6 subnet is paired with the IPv4 one by index, so the v6 network must be as roomy.
    if (v6[0].subnetCount(lenV6) < network.subnetCount(len)) {
      throw new LeaseError(`${v6[0]} has fewer /${lenV6} subnets than ${network} has /${len} subnets`);
    }
    config.networkV6 = v6[0];
    config.subnetLenV6 = lenV6;
  }
  return config;
}

export function subnetKey(prefix: string, subnet: Subnet, subnetV6?: Subnet): string {
  const part = (c: Subnet) => String(c).replace("/", "-");
  return `${prefix}/subnets/${part(subnet)}${subnetV6 ? `&${part(subnetV6)}` : ""}`;
}

/** Parses a lease key; null when the key is not a subnet lease. */
export function parseSubnetKey(prefix: string, key: string): { subnet: Subnet; subnetV6?: Subnet } | null {
  const head = `${prefix}/subnets/`;
  if (!key.startsWith(head)) return null;
  const [a, b, ...rest] = key.slice(head.length).split("&");
  if (!a || rest.length > 0) return null;
  try {
    const subnet = Subnet.parse(a.replace(/-(\d+)$/, "/$1"));
    const subnetV6 = b ? Subnet.parse(b.replace(/-(\d+)$/, "/$1")) : undefined;
    if (subnetV6 && subnetV6.family !== 6) return null;
    return subnetV6 ? { subnet, subnetV6 } : { subnet };
  } catch {
    return null;
  }
}

/** Validates a lease value read from the store; null when it is not one of ours to trust. */
export function parseLeaseValue(text: string): LeaseValue | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (!v || typeof v !== "object") return null;
  const o = v as Record<string, unknown>;
  if (typeof o.publicIP !== "string" || !ipFamily(o.publicIP)) return null;
  if (typeof o.vtepMAC !== "string" || !MAC_RE.test(o.vtepMAC.toLowerCase())) return null;
  if (typeof o.vni !== "number" || !Number.isInteger(o.vni)) return null;
  const value: LeaseValue = {
    publicIP: o.publicIP,
    vtepMAC: o.vtepMAC.toLowerCase(),
    vni: o.vni,
    hostname: typeof o.hostname === "string" ? o.hostname : "",
  };
  if (typeof o.publicIPv6 === "string" && ipFamily(o.publicIPv6) === 6) value.publicIPv6 = o.publicIPv6;
  if (typeof o.hostId === "string") value.hostId = o.hostId;
  return value;
}

export function parseLeaseEntry(prefix: string, entry: StoreEntry): HostLease | null {
  const subnets = parseSubnetKey(prefix, entry.key);
  const value = subnets && parseLeaseValue(entry.value);
  if (!subnets || !value) return null;
  return { key: entry.key, ...subnets, value, modRevision: entry.modRevision, leaseId: entry.leaseId };
}

/** What a host keeps across restarts in its state dir. */
export interface HostIdentity {
  hostId: string;
  vtepMAC: string;
  /** The subnet last held (flannel's "previous subnet.env"), tried first when nothing is leased. */
  lastSubnet?: string;
}

function randomVtepMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfe) | 0x02; // unicast, locally administered
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join(":");
}

export function loadIdentity(stateDir: string): HostIdentity {
  const path = join(stateDir, "identity.json");
  let text: string | null = null;
  try {
    text = readSmallFile(path, 64 * 1024);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new LeaseError(`cannot read ${path}: ${(e as Error).message} (remove it to start with a new host identity)`);
    }
  }
  if (text !== null) {
    let o: Partial<HostIdentity> | null = null;
    try {
      const v: unknown = JSON.parse(text);
      if (v && typeof v === "object" && !Array.isArray(v)) o = v as Partial<HostIdentity>;
    } catch {}
    if (typeof o?.hostId === "string" && typeof o.vtepMAC === "string" && MAC_RE.test(o.vtepMAC)) {
      return { hostId: o.hostId, vtepMAC: o.vtepMAC, ...(typeof o.lastSubnet === "string" ? { lastSubnet: o.lastSubnet } : {}) };
    }
    // A damaged identity (a crash before the atomic rename cannot leave one; a hand edit can):
    // start afresh, as a new host would.
  }
  const fresh: HostIdentity = { hostId: randomUUID(), vtepMAC: randomVtepMac() };
  saveIdentity(stateDir, fresh);
  return fresh;
}

export function saveIdentity(stateDir: string, identity: HostIdentity): void {
  writeFileAtomic(join(stateDir, "identity.json"), `${JSON.stringify(identity, null, 2)}\n`, 0o600);
}

export interface SubnetLeaseOptions {
  store: ClusterStore;
  /** Key prefix, e.g. /berth/network. */
  prefix: string;
  network: NetworkConfig;
  stateDir: string;
  publicIP: string;
  publicIPv6?: string;
  vni: number;
  hostname?: string;
  /** TTL of the lease in seconds (flannel: 24 h). */
  ttlSeconds?: number;
  /** Free subnets the random pick chooses among (flannel: 100). */
  pickAmong?: number;
  /** Collision retries (flannel: 10). */
  attempts?: number;
  /**
   * The subnet(s) this host was assigned elsewhere (Kubernetes: the Node's pod CIDR), instead
   * of leasing one; null while none is assigned yet. The entry is then published without TTL.
   */
  assigned?: () => Promise<{ subnet: Subnet; subnetV6?: Subnet } | null>;
}

/** Acquires and keeps this host's subnet lease. */
export class SubnetLeaseManager {
  private identity: HostIdentity;
  private held: HostLease | null = null;
  private readonly ttlSeconds: number;

  constructor(private readonly options: SubnetLeaseOptions) {
    if (!ipFamily(options.publicIP)) throw new LeaseError(`public IP "${options.publicIP}" is not an IP address`);
    this.identity = loadIdentity(options.stateDir);
    this.ttlSeconds = options.ttlSeconds ?? 24 * 3600;
  }

  get current(): HostLease | null {
    return this.held;
  }

  get vtepMAC(): string {
    return this.identity.vtepMAC;
  }

  get hostId(): string {
    return this.identity.hostId;
  }

  /** The value this host publishes. */
  leaseValue(): LeaseValue {
    const o = this.options;
    const v: LeaseValue = {
      publicIP: o.publicIP,
      vtepMAC: this.identity.vtepMAC,
      vni: o.vni,
      hostname: o.hostname ?? osHostname(),
      hostId: this.identity.hostId,
    };
    if (o.publicIPv6) v.publicIPv6 = o.publicIPv6;
    return v;
  }

  /** Finds or creates this host's lease. Throws StoreUnavailableError when the store is down. */
  async acquire(): Promise<HostLease> {
    if (this.options.assigned) return this.publishAssigned(this.options.assigned);
    const { store, prefix } = this.options;
    const attempts = this.options.attempts ?? 10;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const { entries } = await store.list(`${prefix}/subnets/`);
      const leases = entries.map((e) => parseLeaseEntry(prefix, e)).filter((l): l is HostLease => l !== null);
      const got = (await this.reuseOwn(leases)) ?? (await this.createNew(leases));
      if (got) {
        this.held = got;
        const lastSubnet = String(got.subnet);
        if (this.identity.lastSubnet !== lastSubnet) {
          this.identity = { ...this.identity, lastSubnet };
          saveIdentity(this.options.stateDir, this.identity);
        }
        return got;
      }
      // Lost a race (someone wrote the key between our list and our transaction): list again.
    }
    throw new LeaseError(`could not acquire a subnet lease after ${attempts} attempts (too many collisions)`);
  }

  private async publishAssigned(assigned: NonNullable<SubnetLeaseOptions["assigned"]>): Promise<HostLease> {
    const { store, prefix } = this.options;
    const got = await assigned();
    if (!got) throw new LeaseError("no pod CIDR assigned to this node yet (waiting for it)");
    const lease: HostLease = {
      key: subnetKey(prefix, got.subnet, got.subnetV6),
      subnet: got.subnet,
      value: this.leaseValue(),
      modRevision: 0,
      leaseId: null,
    };
    if (got.subnetV6) lease.subnetV6 = got.subnetV6;
    const existing = await store.get(lease.key);
    const value = JSON.stringify(lease.value);
    const res = existing
      ? await store.replace(lease.key, value, null, existing.modRevision)
      : await store.create(lease.key, value, null);
    if (!res.ok) throw new LeaseError(`could not publish this node's VTEP for ${got.subnet} (changed meanwhile)`);
    lease.modRevision = res.revision;
    this.held = lease;
    return lease;
  }

  /**
   * Refreshes the TTL lease. Returns the lease held afterwards: the same one, or a re-acquired one
   * when the old lease had expired or its key was deleted.
   */
  async renew(): Promise<HostLease> {
    const held = this.held;
    if (!held) return this.acquire();
    if (held.leaseId === null) {
      const entry = await this.options.store.get(held.key);
      if (entry && entry.leaseId === null) return held;
      return this.acquire();
    }
    if (await this.options.store.keepAlive(held.leaseId)) {
      const entry = await this.options.store.get(held.key);
      if (entry && entry.leaseId === held.leaseId) return held;
    }
    this.held = null;
    return this.acquire();
  }

  /** Ends the lease at once (a host leaving the cluster for good). Reservations stay. */
  async release(): Promise<void> {
    const held = this.held;
    this.held = null;
    if (held?.leaseId) await this.options.store.revoke(held.leaseId);
  }

  private isMine(l: HostLease): boolean {
    if (l.value.hostId !== undefined && l.value.hostId === this.identity.hostId) return true;
    // flannel's rule, which also makes reservations work: a lease for our public IP is ours.
    return l.value.publicIP === this.options.publicIP;
  }

  private fitsConfig(l: HostLease): boolean {
    const n = this.options.network;
    if (!n.network.includes(l.subnet) || l.subnet.prefix !== n.subnetLen) return false;
    if (!n.networkV6) return l.subnetV6 === undefined;
    if (!l.subnetV6 || l.subnetV6.prefix !== n.subnetLenV6) return false;
    const index = n.network.subnetIndex(l.subnet);
    return index !== null && l.subnetV6.equals(n.networkV6.subnetAt(n.subnetLenV6!, index));
  }

  private async reuseOwn(leases: HostLease[]): Promise<HostLease | null> {
    const { store } = this.options;
    const mine = leases.filter((l) => this.isMine(l));
    // Prefer a reservation, then the subnet we held last, then any.
    mine.sort((a, b) => rank(a, this.identity.lastSubnet) - rank(b, this.identity.lastSubnet));
    let kept: HostLease | null = null;
    for (const l of mine) {
      if (kept || !this.fitsConfig(l)) {
        // A second lease of ours (an old race) or one the config no longer allows: free it.
        // Reservations are an operator's business and are left alone.
        if (l.leaseId !== null) await store.delete(l.key, l.modRevision);
        continue;
      }
      const value = this.leaseValue();
      // Same subnet, fresh TTL lease (the old one belonged to our previous process). A
      // reservation keeps having no TTL.
      const ttl = l.leaseId === null ? null : this.ttlSeconds;
      const res = await store.replace(l.key, JSON.stringify(value), ttl, l.modRevision);
      if (!res.ok) return null;
      kept = { key: l.key, subnet: l.subnet, subnetV6: l.subnetV6, value, modRevision: res.revision, leaseId: res.leaseId };
      if (!kept.subnetV6) delete kept.subnetV6;
    }
    return kept;
  }

  private async createNew(leases: HostLease[]): Promise<HostLease | null> {
    const { store, prefix, network: n } = this.options;
    const taken = new Set(leases.map((l) => String(l.subnet)));
    const free: bigint[] = [];
    const pickAmong = this.options.pickAmong ?? 100;
    const count = n.network.subnetCount(n.subnetLen);
    // Subnet 0 is skipped like flannel's SubnetMin: its network address is the cluster's.
    let preferred: bigint | null = null;
    if (this.identity.lastSubnet) {
      try {
        const last = Subnet.parse(this.identity.lastSubnet);
        const index = last.prefix === n.subnetLen ? n.network.subnetIndex(last) : null;
        if (index !== null && index > 0n && !taken.has(String(last))) preferred = index;
      } catch {
        // an unreadable lastSubnet is simply not used
      }
    }
    for (let i = 1n; i < count && free.length < pickAmong; i++) {
      if (!taken.has(String(n.network.subnetAt(n.subnetLen, i)))) free.push(i);
    }
    if (preferred === null && free.length === 0) {
      throw new LeaseError(
        `no free subnet left in ${n.network}: all ${count - 1n} /${n.subnetLen} subnets are leased or reserved`,
      );
    }
    const index = preferred ?? free[Math.floor(Math.random() * free.length)]!;
    const subnet = n.network.subnetAt(n.subnetLen, index);
    const subnetV6 = n.networkV6 ? n.networkV6.subnetAt(n.subnetLenV6!, index) : undefined;
    const key = subnetKey(prefix, subnet, subnetV6);
    const value = this.leaseValue();
    const res = await store.create(key, JSON.stringify(value), this.ttlSeconds);
    if (!res.ok) return null;
    const lease: HostLease = { key, subnet, value, modRevision: res.revision, leaseId: res.leaseId };
    if (subnetV6) lease.subnetV6 = subnetV6;
    return lease;
  }
}

function rank(l: HostLease, lastSubnet: string | undefined): number {
  if (l.leaseId === null) return 0;
  if (lastSubnet && String(l.subnet) === lastSubnet) return 1;
  return 2;
}

/** True when `a` and `b` are the same address (textual forms may differ for IPv6). */
export function sameIp(a: string, b: string): boolean {
  try {
    const x = parseIp(a);
    const y = parseIp(b);
    return x.family === y.family && x.value === y.value;
  } catch {
    return false;
  }
}
