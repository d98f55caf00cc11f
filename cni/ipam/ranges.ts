// host-local's configuration: range sets (one address per set; dual-stack is two sets), the
// legacy single top-level range, routes, dataDir and resolvConf. Everything is checked here,
// so the allocator only ever sees ranges whose bounds are inside their subnet, ordered, and
// disjoint. Every error is code 7 and names the key that holds the bad value.
import { isAbsolute } from "node:path";
import { type AddressError, type Family, formatIp, type Ip, parseIp, parseIpPrefix, Subnet } from "../address/address.ts";
import { readSmallFile } from "../protocol/files.ts";
import { configSchema, field, goFields } from "../protocol/schema.ts";
import { CniError, type Dns, ErrorCode, type Route } from "../protocol/types.ts";

/** One range of assignable addresses inside a subnet. Bounds are inclusive. */
export interface AddressRange {
  subnet: Subnet;
  start: bigint;
  end: bigint;
  gateway: bigint;
  /** The config key this range came from, for messages ("ipam.ranges[0][1]"). */
  key: string;
}

/** A pool that yields one address: ranges of one family, tried in order. */
export interface RangeSet {
  family: Family;
  ranges: AddressRange[];
}

export interface HostLocalConfig {
  rangeSets: RangeSet[];
  routes: Route[];
  /** Directory holding the lease database (ipam.db). */
  dataDir: string;
  dns?: Dns;
}

export const DEFAULT_DATA_DIR = "/var/lib/berth/ipam";

function invalid(msg: string): CniError {
  return new CniError(ErrorCode.InvalidConfig, `invalid ipam config: ${msg}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

// host-local's keys, declared for the configuration reference: the parsers below check the
// values themselves; the schemas name the keys, which are matched as host-local's Go decoder
// matches them (see goFields).
const rangeFields = {
  subnet: field.cidr().require().describe("The subnet addresses come from; a prefix of /30 (IPv6 /126) or shorter."),
  rangeStart: field.ip().describe("First address to hand out (default: the subnet's first host)."),
  rangeEnd: field.ip().describe("Last address to hand out (default: the last host; IPv4 broadcast excluded)."),
  gateway: field.ip().describe("The gateway reported with the address (default: the subnet's first host)."),
};
/** A route in ipam.routes (host-local's and static's). */
export const routeFields = {
  dst: field.cidr().require().describe("Destination network; host bits are cleared."),
  gw: field.ip().describe("Next hop (default: the interface's gateway)."),
  mtu: field.int(0).describe("Route MTU."),
  advmss: field.int(0).describe("Advertised TCP MSS."),
  priority: field.int(0).describe("Route metric."),
  table: field.int(0).describe("Routing table id."),
  scope: field.int(0).describe("Route scope (0 universe, 253 link, 254 host)."),
};
export const hostLocalSchema = configSchema({
  subnet: field.cidr().describe("Legacy single range (use ranges): its subnet."),
  rangeStart: field.ip().describe("Legacy single range: its first address."),
  rangeEnd: field.ip().describe("Legacy single range: its last address."),
  gateway: field.ip().describe("Legacy single range: its gateway."),
  ranges: field
    .array(field.array(field.object(rangeFields)))
    .describe("Range sets: each set yields one address (one set per family for dual-stack), its ranges tried in order."),
  routes: field.array(field.object(routeFields)).describe("Routes returned with the addresses."),
  dataDir: field.string().default(DEFAULT_DATA_DIR).describe("Directory of the lease database (ipam.db, SQLite)."),
  resolvConf: field.string().describe("A resolv.conf whose nameserver, domain, search and options become the result's DNS."),
});
const RANGE_KEYS = Object.keys(rangeFields);
const ROUTE_KEYS = Object.keys(routeFields);
export const HOST_LOCAL_KEYS = Object.keys(hostLocalSchema.fields);

function present(v: unknown): boolean {
  return v !== undefined && v !== null && v !== "";
}

/** Parses an IP held by `key`, turning an AddressError into a code-7 error naming the key. */
export function ipAt(key: string, v: unknown): Ip {
  if (typeof v !== "string") throw invalid(`${key} must be an IP address string, got ${JSON.stringify(v)}`);
  try {
    return parseIp(v);
  } catch (e) {
    throw invalid(`${key} ${(e as AddressError).message}`);
  }
}

function show(family: Family, value: bigint): string {
  return formatIp({ family, value });
}

/** Checks one {subnet, rangeStart, rangeEnd, gateway} object and applies host-local's defaults. */
export function parseRange(given: unknown, key: string): AddressRange {
  if (!isObject(given)) throw invalid(`${key} must be an object like {"subnet": "10.1.0.0/24"}, got ${JSON.stringify(given)}`);
  const raw = goFields(given, RANGE_KEYS);
  if (!present(raw.subnet)) throw invalid(`${key}.subnet is required`);
  if (typeof raw.subnet !== "string") throw invalid(`${key}.subnet must be a CIDR string, got ${JSON.stringify(raw.subnet)}`);
  let subnet: Subnet;
  try {
    subnet = Subnet.parse(raw.subnet);
  } catch (e) {
    throw invalid(`${key}.subnet ${(e as AddressError).message}`);
  }
  const bits = subnet.family === 4 ? 32 : 128;
  // A /31 or /32 (/127, /128) leaves no address besides the gateway; host-local refuses them too.
  if (subnet.prefix > bits - 2) {
    throw invalid(`${key}.subnet ${subnet} is too small: IPv${subnet.family} needs a prefix of /${bits - 2} or shorter`);
  }
  // The network address is never handed out; neither is the IPv4 broadcast address.
  const lowest = subnet.network + 1n;
  const highest = subnet.family === 4 ? subnet.last - 1n : subnet.last;

  const bound = (name: "rangeStart" | "rangeEnd" | "gateway", fallback: bigint): bigint => {
    if (!present(raw[name])) return fallback;
    const ip = ipAt(`${key}.${name}`, raw[name]);
    const text = formatIp(ip);
    if (!subnet.contains(ip)) throw invalid(`${key}.${name} ${text} is outside subnet ${subnet}`);
    if (ip.value < lowest) throw invalid(`${key}.${name} ${text} is the network address of ${subnet}`);
    if (ip.value > highest) throw invalid(`${key}.${name} ${text} is the broadcast address of ${subnet}`);
    return ip.value;
  };
  const start = bound("rangeStart", lowest);
  const end = bound("rangeEnd", highest);
  const gateway = bound("gateway", subnet.network + 1n);
  if (start > end) {
    throw invalid(
      `${key}.rangeStart ${show(subnet.family, start)} is after ${key}.rangeEnd ${show(subnet.family, end)} in ${subnet}`,
    );
  }
  if (start === end && start === gateway) {
    throw invalid(`${key} holds only its gateway ${show(subnet.family, gateway)}: no address is left to assign`);
  }
  return { subnet, start, end, gateway, key };
}

function rangesOverlap(a: AddressRange, b: AddressRange): boolean {
  return a.subnet.family === b.subnet.family && a.start <= b.end && b.start <= a.end;
}

function describe(r: AddressRange): string {
  return `${r.key} (${show(r.subnet.family, r.start)}-${show(r.subnet.family, r.end)})`;
}

/** Checks one range set: non-empty, one family, no two ranges overlapping. */
export function parseRangeSet(raw: unknown, key: string): RangeSet {
  if (!Array.isArray(raw) || raw.length === 0) {
    throw invalid(`${key} must be a non-empty array of ranges like [{"subnet": "10.1.0.0/24"}], got ${JSON.stringify(raw)}`);
  }
  const ranges = raw.map((r, i) => parseRange(r, `${key}[${i}]`));
  const family = ranges[0]!.subnet.family;
  ranges.forEach((r, i) => {
    if (r.subnet.family !== family) {
      throw invalid(
        `${r.key}.subnet ${r.subnet} is IPv${r.subnet.family} but ${key}[0] is IPv${family}: a range set holds one family`,
      );
    }
    for (let j = 0; j < i; j++) {
      if (rangesOverlap(ranges[j]!, r)) throw invalid(`${describe(r)} overlaps ${describe(ranges[j]!)}`);
    }
  });
  return { family, ranges };
}

function parseRangeSets(raw: unknown, key: string): RangeSet[] {
  if (!Array.isArray(raw)) throw invalid(`${key} must be an array of range sets like [[{"subnet": "10.1.0.0/24"}]]`);
  return raw.map((set, i) => parseRangeSet(set, `${key}[${i}]`));
}

/** A route from config: dst is masked to its network (the kernel rejects IPv4 host bits). */
export function parseRoute(given: unknown, key: string): Route {
  if (!isObject(given)) throw invalid(`${key} must be an object like {"dst": "0.0.0.0/0"}, got ${JSON.stringify(given)}`);
  const raw = goFields(given, ROUTE_KEYS);
  if (typeof raw.dst !== "string") throw invalid(`${key}.dst must be a CIDR string, got ${JSON.stringify(raw.dst)}`);
  let dst: Subnet;
  try {
    const p = parseIpPrefix(raw.dst);
    dst = Subnet.containing(p.ip, p.prefix);
  } catch (e) {
    throw invalid(`${key}.dst ${(e as AddressError).message}`);
  }
  const route: Route = { dst: dst.toString() };
  if (present(raw.gw)) {
    const gw = ipAt(`${key}.gw`, raw.gw);
    if (gw.family !== dst.family)
      throw invalid(`${key}.gw ${formatIp(gw)} is IPv${gw.family} but dst ${dst} is IPv${dst.family}`);
    route.gw = formatIp(gw);
  }
  for (const name of ["mtu", "advmss", "priority", "table", "scope"] as const) {
    const v = raw[name];
    if (v === undefined || v === null) continue;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0)
      throw invalid(`${key}.${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
    route[name] = v;
  }
  return route;
}

export function parseRoutes(raw: unknown, key: string): Route[] {
  if (raw === undefined || raw === null) return [];
  if (!Array.isArray(raw)) throw invalid(`${key} must be an array of routes, got ${JSON.stringify(raw)}`);
  return raw.map((r, i) => parseRoute(r, `${key}[${i}]`));
}

/** nameserver/domain/search/options from a resolv.conf; undefined when it sets none of them. */
export function parseResolvConf(text: string): Dns | undefined {
  const nameservers: string[] = [];
  const options: string[] = [];
  const dns: Dns = {};
  for (const line of text.split("\n")) {
    const [keyword, ...rest] = line
      .replace(/[#;].*$/, "")
      .trim()
      .split(/\s+/);
    if (!keyword || rest.length === 0) continue;
    if (keyword === "nameserver") nameservers.push(rest[0]!);
    else if (keyword === "domain") dns.domain = rest[0]!;
    else if (keyword === "search") dns.search = rest;
    else if (keyword === "options") options.push(...rest);
  }
  if (nameservers.length > 0) dns.nameservers = nameservers;
  if (options.length > 0) dns.options = options;
  return Object.keys(dns).length > 0 ? dns : undefined;
}

/** A resolv.conf is a few lines; glibc reads at most a few KiB of it. */
const RESOLV_CONF_MAX_BYTES = 64 * 1024;

function readResolvConf(path: unknown): Dns | undefined {
  if (typeof path !== "string" || path === "") throw invalid(`ipam.resolvConf must be a file path, got ${JSON.stringify(path)}`);
  let text: string;
  try {
    text = readSmallFile(path, RESOLV_CONF_MAX_BYTES);
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    throw new CniError(ErrorCode.IoFailure, `ipam.resolvConf: cannot read ${path}: ${why}`);
  }
  return parseResolvConf(text);
}

/**
 * host-local's view of the config. Range sets in order: runtimeConfig.ipRanges first, then
 * the legacy top-level range, then ipam.ranges. Range sets must not overlap each other either:
 * the same address in two sets would be counted twice.
 */
/**
 * `value` when it is an absolute path with no "." or ".." segment (and no NUL), else undefined.
 * A ".." would let a config steer the lease database outside the directory it names.
 */
export function checkedDataDir(value: unknown): string | undefined {
  if (typeof value !== "string" || !isAbsolute(value) || value.includes("\0")) return undefined;
  return value.split("/").some((seg) => seg === "." || seg === "..") ? undefined : value;
}

export function parseHostLocalConfig(section: Record<string, unknown>, runtimeConfig?: Record<string, unknown>): HostLocalConfig {
  const ipam = goFields(section, HOST_LOCAL_KEYS);
  const rangeSets: RangeSet[] = [];
  const fromRuntime = runtimeConfig?.ipRanges;
  if (fromRuntime !== undefined && fromRuntime !== null) rangeSets.push(...parseRangeSets(fromRuntime, "runtimeConfig.ipRanges"));
  if (present(ipam.subnet)) {
    const legacy = parseRange(ipam, "ipam");
    rangeSets.push({ family: legacy.subnet.family, ranges: [legacy] });
  } else {
    for (const name of ["rangeStart", "rangeEnd", "gateway"]) {
      if (present(ipam[name])) throw invalid(`ipam.${name} needs ipam.subnet (or use ipam.ranges)`);
    }
  }
  if (ipam.ranges !== undefined && ipam.ranges !== null) rangeSets.push(...parseRangeSets(ipam.ranges, "ipam.ranges"));
  if (rangeSets.length === 0) throw invalid(`host-local needs ipam.ranges (or the legacy ipam.subnet)`);

  const all = rangeSets.flatMap((s) => s.ranges);
  for (let i = 0; i < all.length; i++) {
    for (let j = 0; j < i; j++) {
      if (rangesOverlap(all[i]!, all[j]!)) throw invalid(`${describe(all[i]!)} overlaps ${describe(all[j]!)}`);
    }
  }

  let dataDir = DEFAULT_DATA_DIR;
  if (ipam.dataDir !== undefined && ipam.dataDir !== null) {
    const dir = checkedDataDir(ipam.dataDir);
    if (dir === undefined) {
      throw invalid(
        `ipam.dataDir must be an absolute directory path without "." or ".." segments, got ${JSON.stringify(ipam.dataDir)}`,
      );
    }
    dataDir = dir;
  }
  const config: HostLocalConfig = { rangeSets, routes: parseRoutes(ipam.routes, "ipam.routes"), dataDir };
  if (ipam.resolvConf !== undefined && ipam.resolvConf !== null) {
    const dns = readResolvConf(ipam.resolvConf);
    if (dns) config.dns = dns;
  }
  return config;
}

/** Which range set (and range) an address belongs to, or null. */
export function findRange(rangeSets: readonly RangeSet[], ip: Ip): { set: number; range: AddressRange } | null {
  for (let set = 0; set < rangeSets.length; set++) {
    for (const range of rangeSets[set]!.ranges) {
      if (range.subnet.family === ip.family && ip.value >= range.start && ip.value <= range.end) return { set, range };
    }
  }
  return null;
}
