// Result conversion between CNI versions. Plugins build the newest shape (types.ts Result);
// `convertResult` writes exactly the shape of the requested version, and `parseResult`
// reads a result of any version (a prevResult, a delegate's output) back into the newest.
//
// Shapes:
//   1.0.0 / 1.1.0   {interfaces, ips: [{address, gateway, interface}], routes, dns}
//                   1.1.0 adds interface mtu/socketPath/pciID and route mtu/advmss/priority/table/scope.
//   0.3.0 - 0.4.0   as 1.0.0 plus ips[].version "4" | "6"; no 1.1 fields.
//   0.1.0 / 0.2.0   {ip4: {ip, gateway, routes}, ip6: {...}, dns}: one address per family.
import { cidrFamily, type Family, familyOf, ipFamily } from "../address/address.ts";
import { CniError, type Dns, ErrorCode, type Interface, type IpConfig, type Result, type Route } from "./types.ts";
import { type CniVersion, isSupportedVersion, NEWEST_VERSION, versionAtLeast } from "./version.ts";

type Json = Record<string, unknown>;

/** Writes `result` (newest shape) in the shape of version `to`. Throws code 1 when 0.1/0.2 cannot hold it. */
export function convertResult(result: Result, to: CniVersion): Json {
  if (!versionAtLeast(to, "0.3.0")) return toLegacy(result, to);
  const full = versionAtLeast(to, "1.1.0");
  const withVersion = !versionAtLeast(to, "1.0.0");
  const out: Json = { cniVersion: to };
  if (result.interfaces) out.interfaces = result.interfaces.map((i) => writeInterface(i, full));
  if (result.ips) {
    out.ips = result.ips.map((ip) => {
      const o: Json = {};
      if (withVersion) o.version = String(familyOf(ip.address));
      if (ip.interface !== undefined) o.interface = ip.interface;
      o.address = ip.address;
      if (ip.gateway !== undefined) o.gateway = ip.gateway;
      return o;
    });
  }
  if (result.routes) out.routes = result.routes.map((r) => writeRoute(r, full));
  if (result.dns) out.dns = writeDns(result.dns);
  return out;
}

function writeInterface(i: Interface, full: boolean): Json {
  const o: Json = { name: i.name };
  if (i.mac !== undefined) o.mac = i.mac;
  if (full && i.mtu !== undefined) o.mtu = i.mtu;
  if (i.sandbox !== undefined) o.sandbox = i.sandbox;
  if (full && i.socketPath !== undefined) o.socketPath = i.socketPath;
  if (full && i.pciID !== undefined) o.pciID = i.pciID;
  return o;
}

function writeRoute(r: Route, full: boolean): Json {
  const o: Json = { dst: r.dst };
  if (r.gw !== undefined) o.gw = r.gw;
  if (full) {
    for (const k of ["mtu", "advmss", "priority", "table", "scope"] as const) {
      if (r[k] !== undefined) o[k] = r[k];
    }
  }
  return o;
}

function writeDns(d: Dns): Json {
  const o: Json = {};
  if (d.nameservers !== undefined) o.nameservers = [...d.nameservers];
  if (d.domain !== undefined) o.domain = d.domain;
  if (d.search !== undefined) o.search = [...d.search];
  if (d.options !== undefined) o.options = [...d.options];
  return o;
}

function toLegacy(result: Result, to: CniVersion): Json {
  const perFamily: Partial<Record<Family, Json>> = {};
  // 0.2.0 holds one address per family: the first of each wins, later ones are dropped.
  for (const ip of result.ips ?? []) {
    const f = familyOf(ip.address);
    if (perFamily[f]) continue;
    const o: Json = { ip: ip.address };
    if (ip.gateway !== undefined) o.gateway = ip.gateway;
    perFamily[f] = o;
  }
  if (!perFamily[4] && !perFamily[6]) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `cannot express the result in CNI ${to}: it has no IP addresses (use cniVersion 0.3.0 or newer)`,
    );
  }
  // Routes go with the address of their destination's family; one without such an address has no place in 0.2.0.
  for (const r of result.routes ?? []) {
    const o = perFamily[familyOf(r.dst)];
    if (!o) continue;
    const route: Json = { dst: r.dst };
    if (r.gw !== undefined) route.gw = r.gw;
    const routes = (o.routes as Json[] | undefined) ?? [];
    routes.push(route);
    o.routes = routes;
  }
  const out: Json = { cniVersion: to };
  if (perFamily[4]) out.ip4 = perFamily[4];
  if (perFamily[6]) out.ip6 = perFamily[6];
  if (result.dns) out.dns = writeDns(result.dns);
  return out;
}

/**
 * Reads a result of any supported version into the newest shape. The version is the
 * result's own cniVersion, else `fallbackVersion` (the config's, for a prevResult).
 * Malformed input is code 6 with a message that names the field (`label` prefixes it).
 */
export function parseResult(raw: unknown, fallbackVersion: CniVersion = NEWEST_VERSION, label = "result"): Result {
  const r = new Reader(label);
  const obj = r.object(raw, "");
  const own = obj.cniVersion;
  if (own !== undefined && !isSupportedVersion(own)) {
    throw new CniError(ErrorCode.IncompatibleVersion, `${label}: cniVersion ${JSON.stringify(own)} is not supported`);
  }
  const version = own ?? fallbackVersion;
  const legacy = !versionAtLeast(version, "0.3.0") || (obj.ips === undefined && (obj.ip4 !== undefined || obj.ip6 !== undefined));
  const result: Result = { cniVersion: NEWEST_VERSION };
  if (legacy) {
    const ips: IpConfig[] = [];
    const routes: Route[] = [];
    for (const key of ["ip4", "ip6"] as const) {
      if (obj[key] === undefined || obj[key] === null) continue;
      const fam = r.object(obj[key], key);
      const ip: IpConfig = { address: r.cidr(fam.ip, `${key}.ip`) };
      if (fam.gateway !== undefined) ip.gateway = r.ip(fam.gateway, `${key}.gateway`);
      ips.push(ip);
      routes.push(...r.array(fam.routes, `${key}.routes`).map((x, i) => r.route(x, `${key}.routes[${i}]`, false)));
    }
    if (ips.length) result.ips = ips;
    if (routes.length) result.routes = routes;
  } else {
    if (obj.interfaces != null) result.interfaces = r.array(obj.interfaces, "interfaces").map((x, i) => r.iface(x, i));
    if (obj.ips != null) result.ips = r.array(obj.ips, "ips").map((x, i) => r.ipConfig(x, i));
    if (obj.routes != null) result.routes = r.array(obj.routes, "routes").map((x, i) => r.route(x, `routes[${i}]`, true));
  }
  if (obj.dns != null) {
    const dns = r.dns(obj.dns);
    if (Object.keys(dns).length) result.dns = dns;
  }
  return result;
}

/** Field readers that name the offending path in their error. */
class Reader {
  constructor(private readonly label: string) {}

  fail(path: string, what: string, got: unknown): never {
    const where = path ? `${this.label}.${path}` : this.label;
    throw new CniError(ErrorCode.DecodeFailure, `invalid ${where}: ${what}, got ${JSON.stringify(got) ?? "undefined"}`);
  }

  object(v: unknown, path: string): Json {
    if (typeof v !== "object" || v === null || Array.isArray(v)) this.fail(path, "must be an object", v);
    return v as Json;
  }

  array(v: unknown, path: string): unknown[] {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) this.fail(path, "must be an array", v);
    return v;
  }

  string(v: unknown, path: string): string {
    if (typeof v !== "string") this.fail(path, "must be a string", v);
    return v;
  }

  strings(v: unknown, path: string): string[] {
    return this.array(v, path).map((x, i) => this.string(x, `${path}[${i}]`));
  }

  int(v: unknown, path: string, min: number): number {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) this.fail(path, `must be an integer ≥ ${min}`, v);
    return v;
  }

  cidr(v: unknown, path: string): string {
    if (typeof v !== "string" || cidrFamily(v) === null) this.fail(path, "must be an address in CIDR notation", v);
    return v;
  }

  ip(v: unknown, path: string): string {
    if (typeof v !== "string" || ipFamily(v) === null) this.fail(path, "must be an IP address", v);
    return v;
  }

  iface(v: unknown, i: number): Interface {
    const p = `interfaces[${i}]`;
    const o = this.object(v, p);
    const out: Interface = { name: this.string(o.name, `${p}.name`) };
    if (o.mac != null) out.mac = this.string(o.mac, `${p}.mac`);
    if (o.mtu != null) out.mtu = this.int(o.mtu, `${p}.mtu`, 0);
    if (o.sandbox != null) out.sandbox = this.string(o.sandbox, `${p}.sandbox`);
    if (o.socketPath != null) out.socketPath = this.string(o.socketPath, `${p}.socketPath`);
    if (o.pciID != null) out.pciID = this.string(o.pciID, `${p}.pciID`);
    return out;
  }

  ipConfig(v: unknown, i: number): IpConfig {
    const p = `ips[${i}]`;
    const o = this.object(v, p);
    const out: IpConfig = { address: this.cidr(o.address, `${p}.address`) };
    if (o.gateway != null && o.gateway !== "") out.gateway = this.ip(o.gateway, `${p}.gateway`);
    if (o.interface != null) out.interface = this.int(o.interface, `${p}.interface`, 0);
    // 0.3.x/0.4.0 "version" is implied by the address and dropped; a contradicting one is a broken result.
    if (o.version != null && o.version !== String(familyOf(out.address))) {
      this.fail(`${p}.version`, `must match the address family of ${out.address}`, o.version);
    }
    return out;
  }

  route(v: unknown, p: string, full: boolean): Route {
    const o = this.object(v, p);
    const out: Route = { dst: this.cidr(o.dst, `${p}.dst`) };
    if (o.gw != null && o.gw !== "") out.gw = this.ip(o.gw, `${p}.gw`);
    if (full) {
      for (const k of ["mtu", "advmss", "priority", "table", "scope"] as const) {
        if (o[k] != null) out[k] = this.int(o[k], `${p}.${k}`, 0);
      }
    }
    return out;
  }

  dns(v: unknown): Dns {
    const o = this.object(v, "dns");
    const out: Dns = {};
    if (o.nameservers != null) out.nameservers = this.strings(o.nameservers, "dns.nameservers");
    if (o.domain != null && o.domain !== "") out.domain = this.string(o.domain, "dns.domain");
    if (o.search != null) out.search = this.strings(o.search, "dns.search");
    if (o.options != null) out.options = this.strings(o.options, "dns.options");
    return out;
  }
}
