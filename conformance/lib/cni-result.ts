// What a CNI result must look like in each spec version, and a version-independent view of
// it for reading back against the kernel. Written from SPEC.md §5 "Result Types" (1.x) and the
// 0.1.0–0.4.0 specs' "Result" sections.

export const ALL_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;
export type CniVersion = (typeof ALL_VERSIONS)[number];

export function versionAtLeast(v: string, min: string): boolean {
  const a = v.split(".").map(Number);
  const b = min.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  }
  return true;
}

export interface ResultInterface {
  name: string;
  mac?: string;
  sandbox?: string;
}

export interface ResultAddress {
  address: string;
  gateway?: string;
  interface?: number;
}

export interface ResultRoute {
  dst: string;
  gw?: string;
}

/** The parts of any version's result that the suite checks against the kernel. */
export interface AttachmentView {
  interfaces: ResultInterface[];
  ips: ResultAddress[];
  routes: ResultRoute[];
}

type Json = Record<string, unknown>;

const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i;
const V4_CIDR = /^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/;

function isCidr(s: unknown): s is string {
  if (typeof s !== "string") return false;
  if (V4_CIDR.test(s)) return true;
  const [addr, len] = s.split("/");
  return Boolean(addr?.includes(":")) && len !== undefined && /^\d{1,3}$/.test(len);
}

function isIp(s: unknown): boolean {
  return typeof s === "string" && (/^(\d{1,3}\.){3}\d{1,3}$/.test(s) || /^[0-9a-f:.]+$/i.test(s));
}

function routeProblems(where: string, routes: unknown, v: string): string[] {
  if (routes === undefined) return [];
  if (!Array.isArray(routes)) return [`${where} is not an array`];
  const p: string[] = [];
  routes.forEach((r: Json, i) => {
    if (!isCidr(r?.dst)) p.push(`${where}[${i}].dst ${JSON.stringify(r?.dst)} is not a CIDR`);
    if (r?.gw !== undefined && !isIp(r.gw)) p.push(`${where}[${i}].gw ${JSON.stringify(r.gw)} is not an IP`);
    if (!versionAtLeast(v, "1.1.0")) {
      for (const k of ["mtu", "advmss", "priority", "table", "scope"]) {
        if (k in (r ?? {})) p.push(`${where}[${i}].${k} exists only from 1.1.0`);
      }
    }
  });
  return p;
}

/**
 * Everything that makes `result` not exactly a `version` ADD result for a container interface
 * named `ifname` in `netnsPath`. Empty when it conforms.
 */
export function resultShapeProblems(version: string, result: unknown, ifname: string, netnsPath: string): string[] {
  if (typeof result !== "object" || result === null || Array.isArray(result)) return ["result is not a JSON object"];
  const r = result as Json;
  const p: string[] = [];
  if (r.cniVersion !== version) p.push(`cniVersion is ${JSON.stringify(r.cniVersion)}, requested ${version}`);

  if (!versionAtLeast(version, "0.3.0")) {
    for (const k of ["ips", "interfaces", "routes"]) if (k in r) p.push(`"${k}" does not exist in ${version}`);
    if (r.ip4 === undefined && r.ip6 === undefined) p.push(`neither ip4 nor ip6 present`);
    for (const fam of ["ip4", "ip6"]) {
      const f = r[fam] as Json | undefined;
      if (f === undefined) continue;
      if (!isCidr(f.ip)) p.push(`${fam}.ip ${JSON.stringify(f.ip)} is not a CIDR`);
      if (f.gateway !== undefined && !isIp(f.gateway)) p.push(`${fam}.gateway is not an IP`);
      p.push(...routeProblems(`${fam}.routes`, f.routes, version));
    }
    return p;
  }

  for (const k of ["ip4", "ip6"]) if (k in r) p.push(`"${k}" does not exist in ${version}`);
  const interfaces = r.interfaces as Json[] | undefined;
  if (interfaces !== undefined && !Array.isArray(interfaces)) p.push("interfaces is not an array");
  const ifs = Array.isArray(interfaces) ? interfaces : [];
  ifs.forEach((it, i) => {
    if (typeof it?.name !== "string" || it.name === "") p.push(`interfaces[${i}].name missing`);
    if (it?.mac !== undefined && (typeof it.mac !== "string" || !MAC.test(it.mac)))
      p.push(`interfaces[${i}].mac ${it.mac} invalid`);
    if (!versionAtLeast(version, "1.1.0")) {
      for (const k of ["mtu", "socketPath", "pciID"]) if (k in (it ?? {})) p.push(`interfaces[${i}].${k} exists only from 1.1.0`);
    }
  });
  const mine = ifs.filter((it) => it?.name === ifname);
  if (mine.length === 0) p.push(`no interface named ${ifname} in interfaces`);
  for (const it of mine) {
    if (it.sandbox !== netnsPath) p.push(`interface ${ifname} sandbox is ${JSON.stringify(it.sandbox)}, expected ${netnsPath}`);
  }

  if (!Array.isArray(r.ips)) p.push("ips is not an array");
  else {
    r.ips.forEach((ip: Json, i) => {
      if (!isCidr(ip?.address)) p.push(`ips[${i}].address ${JSON.stringify(ip?.address)} is not a CIDR`);
      if (ip?.gateway !== undefined && !isIp(ip.gateway)) p.push(`ips[${i}].gateway is not an IP`);
      if (versionAtLeast(version, "1.0.0")) {
        if ("version" in (ip ?? {})) p.push(`ips[${i}].version must not appear in ${version}`);
      } else {
        const fam = typeof ip?.address === "string" && ip.address.includes(":") ? "6" : "4";
        if (ip?.version !== fam) p.push(`ips[${i}].version is ${JSON.stringify(ip?.version)}, expected "${fam}"`);
      }
      if (ip?.interface !== undefined) {
        const idx = ip.interface;
        if (typeof idx !== "number" || !Number.isInteger(idx) || idx < 0 || idx >= ifs.length) {
          p.push(`ips[${i}].interface ${JSON.stringify(idx)} is not an index into interfaces (length ${ifs.length})`);
        } else if (ifs[idx]?.sandbox !== netnsPath) {
          p.push(`ips[${i}].interface points at ${ifs[idx]?.name}, not a container interface`);
        }
      }
    });
  }
  p.push(...routeProblems("routes", r.routes, version));
  return p;
}

/** Version-independent view of an ADD result (0.1/0.2 ip4/ip6 folded into ips). */
export function attachmentView(result: unknown): AttachmentView {
  const r = (result ?? {}) as Json;
  if (Array.isArray(r.ips) || Array.isArray(r.interfaces)) {
    return {
      interfaces: (r.interfaces as ResultInterface[] | undefined) ?? [],
      ips: (r.ips as ResultAddress[] | undefined) ?? [],
      routes: (r.routes as ResultRoute[] | undefined) ?? [],
    };
  }
  const view: AttachmentView = { interfaces: [], ips: [], routes: [] };
  for (const fam of ["ip4", "ip6"]) {
    const f = r[fam] as { ip?: string; gateway?: string; routes?: ResultRoute[] } | undefined;
    if (!f?.ip) continue;
    view.ips.push({ address: f.ip, gateway: f.gateway });
    view.routes.push(...(f.routes ?? []));
  }
  return view;
}

/** The address part of a CIDR. */
export function addressOf(cidr: string): string {
  return cidr.split("/")[0]!;
}
