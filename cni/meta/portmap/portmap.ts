// berth-portmap: host ports forwarded to a container (runtimeConfig.portMappings), chained
// after a main plugin. Accepts the reference plugin's option names; the rules live in berth's
// nftables table as map elements (cni/nft/portmap.ts), so every call is one atomic ruleset
// change and a call without mappings touches nothing (no listing, no lock: plugins#510).
// Stale UDP conntrack entries for the host ports are flushed on ADD and DEL (plugins#1190).
import { Rtnl } from "../../../native/netlink/socket.ts";
import { writeSysctl } from "../../../native/sysctl.ts";
import { formatIp, parseIp, tryParseIp } from "../../address/address.ts";
import { attachmentOf, validAttachmentsOf } from "../../nft/masquerade.ts";
import { DEFAULT_TABLE } from "../../nft/nft.ts";
import {
  addPortmap,
  gcPortmap,
  missingEntries,
  PortConflictError,
  type PortmapEntry,
  type PortmapOptions,
  type Protocol,
  portmapOf,
  removePortmap,
} from "../../nft/portmap.ts";
import { configSchema, field, type Infer, validateConfig } from "../../protocol/schema.ts";
import { CniError, ErrorCode, type Plugin, type Request, type Result } from "../../protocol/types.ts";
import { containerAddresses, hostInterfaces, requirePrevResult } from "../chained.ts";

/** berth-specific code: the host port is already forwarded to another container. */
export const PORT_IN_USE = 120;

const schema = configSchema({
  snat: field
    .boolean()
    .default(true)
    .describe("Masquerade connections to a host port from the host itself (127.0.0.0/8), so hairpin replies return."),
  masqAll: field.boolean().default(false).describe("Masquerade every forwarded connection, not only those from localhost."),
  backend: field
    .string({ oneOf: ["nftables", "iptables"] })
    .unsupported("iptables", "berth uses nftables only")
    .describe("Rule backend."),
  // iptables-backend knobs: meaningless for map-based rules; accepted when they ask for nothing.
  markMasqBit: field.int(0, 31).describe("iptables backend's masquerade mark bit; accepted and ignored."),
  externalSetMarkChain: field.string().describe("iptables backend's mark chain; refused when set (code 2)."),
  conditionsV4: field.array(field.string()).describe("iptables match arguments; only an empty list is accepted."),
  conditionsV6: field.array(field.string()).describe("iptables match arguments; only an empty list is accepted."),
  nftTable: field
    .string({ pattern: /^[A-Za-z][A-Za-z0-9_]{0,31}$/, patternName: "an nftables identifier" })
    .default(DEFAULT_TABLE)
    .describe("The nftables table (inet family) for port forwarding maps.", { extension: true }),
});

type PortmapConf = Infer<typeof schema.fields>;

export interface PortMapping {
  hostPort: number;
  containerPort: number;
  protocol: Protocol;
  /** Canonical; undefined for "", 0.0.0.0 and :: (every local address). */
  hostIP?: string;
}

function parseConf(req: Request): PortmapConf {
  const conf = validateConfig(req.config, schema);
  if (conf.externalSetMarkChain !== undefined) {
    throw new CniError(
      ErrorCode.UnsupportedField,
      `unsupported field: "externalSetMarkChain": ${JSON.stringify(conf.externalSetMarkChain)} is an iptables chain; berth uses nftables only`,
    );
  }
  for (const key of ["conditionsV4", "conditionsV6"] as const) {
    if ((conf[key]?.length ?? 0) > 0) {
      throw new CniError(
        ErrorCode.UnsupportedField,
        `unsupported field: "${key}": ${JSON.stringify(conf[key])} are iptables match arguments; berth uses nftables only`,
      );
    }
  }
  return conf;
}

const mappingSchema = configSchema({
  hostPort: field.int(1, 65535).require(),
  containerPort: field.int(1, 65535).require(),
  protocol: field.string().default("tcp"),
  hostIP: field.string(),
});

/** runtimeConfig.portMappings, checked; [] when absent. */
export function portMappings(req: Request): PortMapping[] {
  const list = req.config.runtimeConfig?.portMappings;
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list)) {
    throw new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: "runtimeConfig.portMappings" must be an array, got ${JSON.stringify(list)}`,
    );
  }
  return list.map((raw, i) => {
    const where = `runtimeConfig.portMappings[${i}]`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      throw new CniError(ErrorCode.InvalidConfig, `invalid config: "${where}" must be an object, got ${JSON.stringify(raw)}`);
    }
    let m: Infer<typeof mappingSchema.fields>;
    try {
      m = validateConfig(raw as Record<string, unknown>, mappingSchema);
    } catch (e) {
      if (e instanceof CniError) throw new CniError(e.code, e.message.replace('config: "', `config: "${where}.`));
      throw e;
    }
    const protocol = m.protocol.toLowerCase();
    if (protocol !== "tcp" && protocol !== "udp" && protocol !== "sctp") {
      throw new CniError(
        ErrorCode.InvalidConfig,
        `invalid config: "${where}.protocol" must be tcp, udp or sctp, got ${JSON.stringify(m.protocol)}`,
      );
    }
    let hostIP: string | undefined;
    if (m.hostIP !== undefined && m.hostIP !== "") {
      const ip = tryParseIp(m.hostIP);
      if (!ip)
        throw new CniError(
          ErrorCode.InvalidConfig,
          `invalid config: "${where}.hostIP" must be an IP address, got ${JSON.stringify(m.hostIP)}`,
        );
      if (ip.value !== 0n) hostIP = formatIp(ip);
    }
    return { hostPort: m.hostPort, containerPort: m.containerPort, protocol, hostIP };
  });
}

/** One entry per mapping and container address of the mapping's family (hostIP fixes the family). */
function entriesFor(mappings: PortMapping[], prev: Result): PortmapEntry[] {
  const addrs = containerAddresses(prev);
  const out: PortmapEntry[] = [];
  for (const fam of [4, 6] as const) {
    const pod = addrs.find((a) => a.family === fam);
    if (!pod) continue;
    for (const m of mappings) {
      if (m.hostIP && parseIp(m.hostIP).family !== fam) continue;
      out.push({
        family: fam,
        protocol: m.protocol,
        hostPort: m.hostPort,
        hostIP: m.hostIP,
        pod: pod.ip,
        containerPort: m.containerPort,
      });
    }
  }
  return out;
}

function options(conf: PortmapConf): PortmapOptions {
  return { snat: conf.snat, masqAll: conf.masqAll };
}

/**
 * route_localnet on the host interface that carries the container's traffic (the bridge, or
 * the host veth for ptp): a packet from 127.0.0.1 may then be routed to the pod, and the
 * masquerade rule gives it a real source address on the way out.
 */
function enableLocalnetRouting(prev: Result): void {
  const nl = Rtnl.open();
  try {
    const links = hostInterfaces(prev)
      .map((i) => nl.linkGet(i.name))
      .filter((l) => l !== null);
    const dev = links.find((l) => l.kind === "bridge") ?? links[0];
    if (dev) writeSysctl(["net", "ipv4", "conf", dev.name, "route_localnet"], "1");
  } finally {
    nl.close();
  }
}

/** Drops conntrack entries of the host ports' UDP flows, so a datagram stream does not stick to a dead pod. */
async function flushUdpConntrack(mappings: PortMapping[]): Promise<void> {
  const ports = [...new Set(mappings.filter((m) => m.protocol === "udp").map((m) => m.hostPort))];
  if (ports.length === 0) return;
  const { execFile } = await import("node:child_process");
  await Promise.all(
    ports.map(
      (port) =>
        new Promise<void>((resolve, reject) => {
          execFile(
            "conntrack",
            ["-D", "-p", "udp", "--orig-port-dst", String(port)],
            { timeout: 10_000 },
            (err, _out, stderr) => {
              // Exit 1 with "0 flow entries have been deleted" is the usual, good case.
              if (!err || /0 flow entries/.test(stderr)) resolve();
              else if ((err as NodeJS.ErrnoException).code === "ENOENT")
                resolve(); // no conntrack tool: nothing we can flush
              else
                reject(
                  new CniError(
                    ErrorCode.Internal,
                    `conntrack -D -p udp --orig-port-dst ${port}: ${stderr.trim() || err.message}`,
                  ),
                );
            },
          );
        }),
    ),
  );
}

async function add(req: Request): Promise<Result> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-portmap");
  const mappings = portMappings(req);
  if (mappings.length === 0) return prev;
  const entries = entriesFor(mappings, prev);
  if (entries.length === 0) return prev;
  if (conf.snat && entries.some((e) => e.family === 4)) enableLocalnetRouting(prev);
  try {
    await addPortmap(attachmentOf(req), entries, options(conf), conf.nftTable);
  } catch (e) {
    if (e instanceof PortConflictError) throw new CniError(PORT_IN_USE, e.message);
    throw e;
  }
  await flushUdpConntrack(mappings);
  return prev;
}

async function del(req: Request): Promise<void> {
  const conf = parseConf(req);
  const mappings = portMappings(req);
  if (mappings.length === 0) return;
  await removePortmap(attachmentOf(req), conf.nftTable);
  await flushUdpConntrack(mappings);
}

async function check(req: Request): Promise<void> {
  const conf = parseConf(req);
  const prev = requirePrevResult(req, "berth-portmap");
  const mappings = portMappings(req);
  if (mappings.length === 0) return;
  const entries = entriesFor(mappings, prev);
  const missing = missingEntries(entries, options(conf), await portmapOf(attachmentOf(req), conf.nftTable));
  if (missing.length > 0) {
    const m = missing[0]!;
    throw new CniError(
      ErrorCode.Internal,
      `CHECK: port mapping ${m.hostIP ?? "*"}:${m.hostPort}/${m.protocol} → ${m.pod}:${m.containerPort} is missing from nftables table ${conf.nftTable}`,
    );
  }
}

/** GC: drops this network's mappings of attachments not in the valid list (the reference has no GC). */
async function gc(req: Request): Promise<void> {
  const conf = parseConf(req);
  await gcPortmap(req.config.name, validAttachmentsOf(req), conf.nftTable);
}

export const portmapPlugin: Plugin = {
  name: "berth-portmap",
  schema,
  add,
  del,
  check,
  gc,
};
