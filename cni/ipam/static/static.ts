// berth-static: the addresses come from the config (or the runtime), nothing is stored.
// Sources, as in the reference static plugin: runtimeConfig.ips replaces ipam.addresses, else
// args.cni.ips replaces them, else CNI_ARGS IP= adds to them; CNI_ARGS GATEWAY= fills the
// gateway of every address of its family that has none.

import { type AddressError, formatIp, type Ip, type IpPrefix, parseIp, parseIpPrefix } from "../../address/address.ts";
import { configSchema, field, goFields } from "../../protocol/schema.ts";
import { CniError, type Dns, ErrorCode, type IpConfig, type Plugin, type Request, type Result } from "../../protocol/types.ts";
import { IpamErrorCode } from "../errors.ts";
import { ipAt, parseRoutes, routeFields } from "../ranges.ts";

interface StaticAddress {
  address: IpPrefix;
  gateway?: Ip;
}

function invalid(msg: string): CniError {
  return new CniError(ErrorCode.InvalidConfig, `invalid ipam config: ${msg}`);
}

// The reference static plugin's keys, declared for the configuration reference: the parsers
// below check the values; the schemas name the keys, which are matched as the reference's Go
// decoder matches them (see goFields).
const addressFields = {
  address: field.cidr().require().describe("The address with its prefix length."),
  gateway: field.ip().describe("Its gateway (CNI_ARGS GATEWAY= fills it when unset)."),
};
const dnsFields = {
  nameservers: field.array(field.ip()).describe("DNS servers."),
  domain: field.string().describe("Local domain."),
  search: field.array(field.string()).describe("Search domains."),
  options: field.array(field.string()).describe("resolver options."),
};
const schema = configSchema({
  addresses: field
    .array(field.object(addressFields))
    .describe("The addresses to assign; runtimeConfig.ips or args.cni.ips replace them, CNI_ARGS IP= adds to them."),
  routes: field.array(field.object(routeFields)).describe("Routes returned with the addresses."),
  dns: field.object(dnsFields).describe("DNS settings returned in the result."),
});
const STATIC_KEYS = Object.keys(schema.fields);
const ADDRESS_KEYS = Object.keys(addressFields);
const DNS_KEYS = Object.keys(dnsFields);

/** The ipam section with its keys matched to static's. */
function ipamOf(req: Request): Record<string, unknown> {
  return goFields(req.config.ipam ?? {}, STATIC_KEYS);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function prefixAt(key: string, v: unknown): IpPrefix {
  if (typeof v !== "string") throw invalid(`${key} must be an address in CIDR notation, got ${JSON.stringify(v)}`);
  try {
    return parseIpPrefix(v);
  } catch (e) {
    throw invalid(`${key} ${(e as AddressError).message}`);
  }
}

function parseAddress(given: unknown, key: string): StaticAddress {
  if (!isObject(given)) throw invalid(`${key} must be an object like {"address": "10.1.0.5/24"}, got ${JSON.stringify(given)}`);
  const raw = goFields(given, ADDRESS_KEYS);
  const address = prefixAt(`${key}.address`, raw.address);
  if (raw.gateway === undefined || raw.gateway === null || raw.gateway === "") return { address };
  const gateway = ipAt(`${key}.gateway`, raw.gateway);
  if (gateway.family !== address.ip.family) {
    throw invalid(`${key}.gateway ${formatIp(gateway)} is IPv${gateway.family} but the address is IPv${address.ip.family}`);
  }
  return { address, gateway };
}

function listAt(key: string, v: unknown): unknown[] {
  if (!Array.isArray(v)) throw invalid(`${key} must be an array, got ${JSON.stringify(v)}`);
  return v;
}

function nonEmpty(v: unknown): boolean {
  return v !== undefined && v !== null && !(Array.isArray(v) && v.length === 0);
}

/** The addresses for this attachment, after the runtime's overrides, in the order configured. */
export function staticAddresses(req: Request): StaticAddress[] {
  const ipam = ipamOf(req);
  const runtimeIps = req.config.runtimeConfig?.ips;
  const argsSection = req.config.args?.cni;
  const argsIps = isObject(argsSection) ? argsSection.ips : undefined;

  let addresses: StaticAddress[];
  if (nonEmpty(runtimeIps)) {
    addresses = listAt("runtimeConfig.ips", runtimeIps).map((a, i) => ({ address: prefixAt(`runtimeConfig.ips[${i}]`, a) }));
  } else if (nonEmpty(argsIps)) {
    addresses = listAt("args.cni.ips", argsIps).map((a, i) => ({ address: prefixAt(`args.cni.ips[${i}]`, a) }));
  } else {
    addresses =
      ipam.addresses === undefined || ipam.addresses === null
        ? []
        : listAt("ipam.addresses", ipam.addresses).map((a, i) => parseAddress(a, `ipam.addresses[${i}]`));
    if (req.args.IP) {
      addresses.push(...req.args.IP.split(",").map((a, i) => ({ address: prefixAt(`CNI_ARGS IP[${i}]`, a.trim()) })));
    }
  }
  if (req.args.GATEWAY) {
    for (const [i, text] of req.args.GATEWAY.split(",").entries()) {
      const gw = ipAt(`CNI_ARGS GATEWAY[${i}]`, text.trim());
      for (const a of addresses) if (!a.gateway && a.address.ip.family === gw.family) a.gateway = gw;
    }
  }
  if (addresses.length === 0) {
    throw invalid(`berth-static needs at least one address (ipam.addresses, runtimeConfig.ips, args.cni.ips or CNI_ARGS IP)`);
  }
  const seen = new Set<string>();
  for (const a of addresses) {
    const text = formatIp(a.address.ip);
    if (seen.has(text)) throw invalid(`address ${text} is listed twice`);
    seen.add(text);
  }
  return addresses;
}

function parseDns(given: unknown): Dns | undefined {
  if (given === undefined || given === null) return undefined;
  if (!isObject(given)) throw invalid(`ipam.dns must be an object, got ${JSON.stringify(given)}`);
  const raw = goFields(given, DNS_KEYS);
  const dns: Dns = {};
  for (const key of ["nameservers", "search", "options"] as const) {
    const v = raw[key];
    if (v === undefined || v === null) continue;
    if (!Array.isArray(v) || v.some((s) => typeof s !== "string")) throw invalid(`ipam.dns.${key} must be an array of strings`);
    dns[key] = v as string[];
  }
  if (raw.domain !== undefined && raw.domain !== null) {
    if (typeof raw.domain !== "string") throw invalid(`ipam.dns.domain must be a string`);
    dns.domain = raw.domain;
  }
  for (const [i, ns] of (dns.nameservers ?? []).entries()) ipAt(`ipam.dns.nameservers[${i}]`, ns);
  return Object.keys(dns).length > 0 ? dns : undefined;
}

function toIpConfig(a: StaticAddress): IpConfig {
  const ip: IpConfig = { address: `${formatIp(a.address.ip)}/${a.address.prefix}` };
  if (a.gateway) ip.gateway = formatIp(a.gateway);
  return ip;
}

export const staticPlugin: Plugin = {
  name: "berth-static",
  cniArgs: ["IP", "GATEWAY"],
  schema,

  async add(req: Request): Promise<Result> {
    const ipam = ipamOf(req);
    const result: Result = { cniVersion: req.config.cniVersion, ips: staticAddresses(req).map(toIpConfig) };
    const routes = parseRoutes(ipam.routes, "ipam.routes");
    if (routes.length > 0) result.routes = routes;
    const dns = parseDns(ipam.dns);
    if (dns) result.dns = dns;
    return result;
  },

  // Nothing was allocated, so nothing to release.
  async del(): Promise<void> {},

  async check(req: Request): Promise<void> {
    const addresses = staticAddresses(req);
    const prev = req.config.prevResult?.ips;
    if (!prev) return;
    const reported = new Set(prev.map((ip) => ip.address.split("/")[0]!).map((a) => formatIp(parseIp(a))));
    for (const a of addresses) {
      const text = formatIp(a.address.ip);
      if (!reported.has(text))
        throw new CniError(IpamErrorCode.CheckFailed, `static address ${text} is missing from prevResult.ips`);
    }
  },
};
