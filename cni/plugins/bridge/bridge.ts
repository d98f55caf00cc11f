// berth-bridge: a veth pair per container, the host end enslaved to a Linux bridge, with
// addresses from IPAM. Accepts the reference bridge plugin's option names. ADD reads top to
// bottom: config → bridge → veth (peer created directly in the container netns, on the thread
// pool) alongside IPAM → container addresses/routes → gateway → masquerade/spoof check → result
// once the lease is on disk. Every step that
// changed something registers its undo, so a failed ADD leaves nothing behind.
import { isNetlinkError } from "../../../native/netlink/error.ts";
import type { Link } from "../../../native/netlink/link.ts";
import type { Rtnl } from "../../../native/netlink/socket.ts";
import type { Netns } from "../../../native/netns.ts";
import { writeSysctl } from "../../../native/sysctl.ts";
import { familyOf, firstHost, normalizeCidr, subnetOf } from "../../address/address.ts";
import { addMacSpoofCheck, macSpoofPorts, removeMacSpoofCheck } from "../../nft/macspoof.ts";
import { DEFAULT_TABLE } from "../../nft/nft.ts";
import { gcAttachments, requestedMac } from "../../protocol/config.ts";
import { configSchema, field, type Infer, validateConfig } from "../../protocol/schema.ts";
import {
  awaitDurable,
  CniError,
  ErrorCode,
  type IpConfig,
  type Plugin,
  type Request,
  type Result,
  type Route,
} from "../../protocol/types.ts";
import { openContainerNetns, openNetnsIfPresent, withRtnl } from "../container-netns.ts";
import { kernelError, settle } from "../errors.ts";
import { gcHostLinks } from "../gc.ts";
import { addAttachmentMasq, checkAttachmentMasq, gcAttachmentMasq, removeAttachmentMasq } from "../ip-masq.ts";
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus, ipamType } from "../ipam-client.ts";
import { hostLinkName, networkTag } from "../link-names.ts";
import { randomMac } from "../mac.ts";
import { checkSandbox, configureSandbox, type SandboxLink } from "../sandbox.ts";
import { Undo } from "../undo.ts";
import { createVethPair, removePair, whileCreating } from "../veth.ts";

/** The kernel refuses the 1,024th port of a bridge (EXFULL). */
export const MAX_BRIDGE_PORTS = 1023;

const schema = configSchema(
  {
    bridge: field
      .string({ pattern: /^[A-Za-z0-9_.-]{1,15}$/, patternName: "an interface name of 1-15 characters" })
      .default("cni0")
      .describe("The host bridge the container's veth is attached to; created when missing."),
    isGateway: field
      .boolean()
      .default(false)
      .describe("Give the bridge the IPAM gateway address (first host of the subnet when IPAM names none)."),
    isDefaultGateway: field
      .boolean()
      .default(false)
      .describe("Also route the container's default route through the bridge; implies isGateway."),
    forceAddress: field
      .boolean()
      .default(false)
      .describe("Replace a bridge address in the same subnet that differs from the gateway, instead of failing."),
    ipMasq: field
      .boolean()
      .default(false)
      .describe("Masquerade traffic from the container's addresses to destinations outside its subnet."),
    ipMasqBackend: field
      .string({ oneOf: ["nftables", "iptables"] })
      .unsupported("iptables", "berth uses nftables only")
      .describe("Backend for ipMasq."),
    mtu: field.int(68, 65535).describe("MTU of the bridge and the veth pair (default: the kernel's, 1500)."),
    hairpinMode: field
      .boolean()
      .default(false)
      .describe("Hairpin mode on the container's bridge port: traffic may leave and re-enter it."),
    promiscMode: field.boolean().default(false).describe("Put the bridge in promiscuous mode (not with hairpinMode)."),
    vlan: field
      .int(0, 4094)
      .describe("VLAN id of the container's bridge port (untagged, PVID); turns on VLAN filtering. Not with isGateway."),
    preserveDefaultVlan: field.boolean().default(true).describe("With vlan, keep the port in the default VLAN 1 as well."),
    macspoofchk: field
      .boolean()
      .default(false)
      .describe("Drop frames from the container whose source MAC is not its interface's (nftables)."),
    enabledad: field.boolean().default(false).describe("Run IPv6 duplicate address detection on the container's addresses."),
    disableContainerInterface: field.boolean().default(false).describe("Leave the container's interface down (not with ipam)."),
    portIsolation: field
      .boolean()
      .default(false)
      .describe("Isolate the container's bridge port: isolated ports cannot reach each other."),
    nftTable: field
      .string({ pattern: /^[A-Za-z][A-Za-z0-9_]{0,31}$/, patternName: "an nftables identifier" })
      .default(DEFAULT_TABLE)
      .describe("The nftables table (inet family) for masquerade and spoof-check rules.", { extension: true }),
  },
  { exclusive: [["hairpinMode", "promiscMode"]] },
);

export type BridgeConf = Infer<typeof schema.fields>;

export function parseBridgeConf(req: Request): BridgeConf {
  const conf = validateConfig(req.config, schema);
  if (conf.isDefaultGateway) conf.isGateway = true;
  if (conf.vlan !== undefined && conf.vlan > 0 && conf.isGateway) {
    throw new CniError(
      ErrorCode.UnsupportedField,
      `unsupported field: "vlan": ${conf.vlan} cannot be combined with "isGateway": true in berth`,
    );
  }
  if (conf.disableContainerInterface && ipamType(req)) {
    throw new CniError(
      ErrorCode.UnsupportedField,
      `unsupported field: "disableContainerInterface": true cannot be combined with "ipam"`,
    );
  }
  return conf;
}

/**
 * Creates the bridge if needed. Safe when many ADDs race on a new bridge: EEXIST means
 * another one won, and everything after is idempotent. The MAC is pinned at creation so it
 * does not change as ports come and go. `found`: the caller's own lookup of the bridge.
 */
export function ensureBridge(nl: Rtnl, conf: BridgeConf, found?: Link | null): Link {
  let br = found === undefined ? nl.linkGet(conf.bridge) : found;
  if (!br) {
    try {
      nl.linkAdd({
        kind: "bridge",
        name: conf.bridge,
        mtu: conf.mtu,
        mac: randomMac(),
        up: true,
        vlanFiltering: conf.vlan !== undefined ? true : undefined,
      });
    } catch (e) {
      if (!isNetlinkError(e, "EEXIST")) throw kernelError(`create bridge ${conf.bridge}`, e);
    }
    br = nl.linkGet(conf.bridge);
    if (!br) throw new CniError(ErrorCode.TryAgainLater, `bridge ${conf.bridge} vanished while being created`);
  }
  if (br.kind !== "bridge") {
    throw new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: "bridge": ${conf.bridge} exists but is a ${br.kind ?? "non-bridge"} device`,
    );
  }
  const changes: Parameters<Rtnl["linkSet"]>[1] = {};
  if (!br.up) changes.up = true;
  if (conf.promiscMode && !br.promisc) changes.promisc = true;
  if (Object.keys(changes).length > 0) nl.linkSet(br.index, changes);
  if (conf.vlan !== undefined && !br.bridge?.vlanFiltering) {
    throw new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: "vlan" needs vlan_filtering, which existing bridge ${conf.bridge} has off`,
    );
  }
  return br;
}

/** Gateway addresses on the bridge (isGateway). A different address in the same subnet fails unless forceAddress. */
function ensureGateway(nl: Rtnl, br: Link, conf: BridgeConf, ips: IpConfig[]): void {
  const existing = nl.addrList({ ifindex: br.index });
  for (const ip of ips) {
    if (!ip.gateway) continue;
    const len = ip.address.split("/")[1];
    const want = normalizeCidr(`${ip.gateway}/${len}`);
    const subnet = subnetOf(ip.address);
    if (existing.some((a) => a.cidr === want)) continue;
    for (const a of existing) {
      if (a.family !== familyOf(ip.address) || a.scope === "link") continue;
      if (subnetOf(a.cidr) !== subnet && subnetOf(`${a.address}/${len}`) !== subnet) continue;
      if (!conf.forceAddress) {
        throw new CniError(
          ErrorCode.InvalidConfig,
          `bridge ${conf.bridge} already has an IP address ${a.cidr} different from the gateway ${want} (set "forceAddress" to replace it)`,
        );
      }
      nl.addrDel(br.index, a.cidr);
    }
    try {
      nl.addrAdd(br.index, { cidr: want, nodad: familyOf(want) === 6, broadcast: familyOf(want) === 4 ? "auto" : undefined });
    } catch (e) {
      if (!isNetlinkError(e, "EEXIST")) throw kernelError(`add gateway ${want} to ${conf.bridge}`, e);
    }
  }
  if (ips.some((i) => familyOf(i.address) === 4)) writeSysctl("net.ipv4.ip_forward", "1");
  if (ips.some((i) => familyOf(i.address) === 6)) writeSysctl("net.ipv6.conf.all.forwarding", "1");
}

function hostName(req: Request): string {
  return hostLinkName("bv", req.config.name, req.containerId, req.ifname);
}

async function add(req: Request): Promise<Result> {
  const conf = parseBridgeConf(req);
  const mac = requestedMac(req);
  const undo = new Undo();
  const ns = openContainerNetns(req);
  const host = hostName(req);
  try {
    return await withRtnl(undefined, req.host, async (hostNl) =>
      withRtnl(ns, req.host, (podNl) =>
        undo.guard(async () => {
          // Both lookups at once on the thread pool when the agent serves other ADDs (this thread
          // keeps serving while they hold the rtnl lock), inline when alone. Before IPAM: a
          // repeated ADD must fail without touching the attachment that exists.
          const [existing, bridge] = await Promise.all([podNl.linkGetAsync(req.ifname), hostNl.linkGetAsync(conf.bridge)]);
          if (existing) {
            throw new CniError(ErrorCode.InvalidConfig, `interface ${req.ifname} already exists in ${req.netns}`);
          }
          const br = ensureBridge(hostNl, conf, bridge);

          // The veth is made on the thread pool while IPAM allocates here. Enslaved and up as it
          // is created: one round trip, and a full bridge (EXFULL) fails it whole.
          const veth = createVethPair(hostNl, req, ns, host, { mtu: conf.mtu, mac, master: br.index, up: true }, undo);
          const [hostEnd, ipam] = await whileCreating(veth, async () => {
            if (!ipamType(req)) return undefined;
            const r = await ipamAdd(req);
            undo.push(() => ipamDel(req));
            return r;
          });
          const ips: IpConfig[] = (ipam?.ips ?? []).map((ip) => ({
            address: ip.address,
            gateway: ip.gateway ?? (conf.isGateway ? firstHost(ip.address) : undefined),
          }));
          if (conf.hairpinMode || conf.portIsolation) {
            hostNl.bridgePortSet(hostEnd.index, {
              hairpin: conf.hairpinMode || undefined,
              isolated: conf.portIsolation || undefined,
            });
          }
          if (conf.vlan !== undefined) {
            hostNl.bridgeVlanAdd(hostEnd.index, conf.vlan, { pvid: true, untagged: true });
            if (!conf.preserveDefaultVlan && conf.vlan !== 1) hostNl.bridgeVlanDel(hostEnd.index, 1);
          }

          const routes: Route[] = [...(ipam?.routes ?? [])];
          if (conf.isDefaultGateway) {
            for (const fam of [4, 6] as const) {
              const gw = ips.find((i) => familyOf(i.address) === fam)?.gateway;
              const dst = fam === 4 ? "0.0.0.0/0" : "::/0";
              if (gw && !routes.some((r) => r.dst === dst)) routes.push({ dst, gw });
            }
          }
          // Re-read alongside, on the thread pool: a bridge whose MAC berth did not pin takes its lowest port's.
          const bridgeNow = hostNl.linkGetAsync(br.index);
          bridgeNow.catch(() => {}); // awaited below
          let pod: SandboxLink;
          try {
            pod = await configureSandbox(
              podNl,
              req.ifname,
              ips,
              routes,
              { nodad: !conf.enabledad, down: conf.disableContainerInterface },
              hostEnd.pod,
            );
          } catch (e) {
            throw kernelError(`configure ${req.ifname} in ${req.netns}`, e);
          }
          if (conf.isGateway) ensureGateway(hostNl, br, conf, ips);

          if (conf.ipMasq && ips.length > 0) {
            await addAttachmentMasq(
              req,
              ips.map((i) => i.address),
              conf.nftTable,
              undo,
            );
          }
          if (conf.macspoofchk && pod.mac) {
            await addMacSpoofCheck(host, pod.mac, conf.nftTable);
            undo.push(() => removeMacSpoofCheck(host, conf.nftTable));
          }

          const bridgeMac = (await bridgeNow)?.mac ?? br.mac;
          // The lease must be on disk before anyone sees the result; a failure here is still undone.
          await awaitDurable(req);
          return {
            cniVersion: req.config.cniVersion,
            interfaces: [
              { name: br.name, mac: bridgeMac },
              { name: host, mac: hostEnd.mac },
              { name: req.ifname, mac: pod.mac, mtu: pod.mtu, sandbox: req.netns },
            ],
            ips: ips.map((ip) => ({ ...ip, interface: 2 })),
            routes,
            dns: ipam?.dns ?? req.config.dns,
          };
        }),
      ),
    );
  } catch (e) {
    await undo.run();
    throw e;
  } finally {
    ns.close();
  }
}

async function del(req: Request): Promise<void> {
  const conf = parseBridgeConf(req);
  // The address is released first and always: a DEL must never leak an IP. A store that
  // cannot be read does not keep the links: they go, and the store's error is reported after.
  const released = await settle(() => ipamDel(req));
  const ns = openNetnsIfPresent(req);
  try {
    await withRtnl(undefined, req.host, async (hostNl) => {
      const addresses = await removePair(req, ns, hostNl, hostName(req));
      if (conf.ipMasq) {
        await removeAttachmentMasq(req, addresses, conf.nftTable);
      }
      if (conf.macspoofchk) await removeMacSpoofCheck(hostName(req), conf.nftTable);
    });
  } finally {
    ns?.close();
  }
  released.rethrow();
}

async function check(req: Request): Promise<void> {
  const conf = parseBridgeConf(req);
  const prev = req.config.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidConfig, "CHECK needs prevResult (the ADD result)");
  if (ipamType(req)) await ipamCheck(req);
  const ns: Netns = openContainerNetns(req);
  try {
    await withRtnl(undefined, async (hostNl) => {
      const br = hostNl.linkGet(conf.bridge);
      if (br?.kind !== "bridge") throw new CniError(ErrorCode.Internal, `CHECK: bridge ${conf.bridge} is missing`);
      const host = hostNl.linkGet(hostName(req));
      if (!host) throw new CniError(ErrorCode.Internal, `CHECK: host interface ${hostName(req)} is missing`);
      if (host.masterIndex !== br.index)
        throw new CniError(ErrorCode.Internal, `CHECK: ${host.name} is not attached to bridge ${conf.bridge}`);
      await withRtnl(ns, (podNl) => {
        checkSandbox(podNl, req.ifname, prev, req.netns);
      });
    });
  } finally {
    ns.close();
  }
  if (conf.ipMasq) {
    await checkAttachmentMasq(req, prev, conf.nftTable);
  }
  if (conf.macspoofchk && !(await macSpoofPorts(conf.nftTable)).includes(hostName(req))) {
    throw new CniError(ErrorCode.Internal, `CHECK: MAC spoof check for ${hostName(req)} is missing`);
  }
}

/**
 * GC: everything of this network whose attachment is not in the valid list — IP
 * reservations (through IPAM), host veths (found by their deterministic names) and
 * masquerade/spoof-check rules. The reference plugins implement none of this.
 */
async function gc(req: Request): Promise<void> {
  const conf = parseBridgeConf(req);
  const valid = gcAttachments(req.config);
  const errors: string[] = [];
  const ipam = await settle(async () => {
    if (ipamType(req)) await ipamGc(req);
  });
  if (ipam.error) errors.push(`IPAM: ${ipam.error.message}`);
  errors.push(...(await gcHostLinks("bv", req.config.name, valid)));
  try {
    if (conf.ipMasq) {
      await gcAttachmentMasq(req, conf.nftTable);
    }
    if (conf.macspoofchk) {
      const keep = new Set(valid.map((a) => hostLinkName("bv", req.config.name, a.containerID, a.ifname)));
      for (const port of await macSpoofPorts(conf.nftTable)) {
        if (port.startsWith(`bv${networkTag(req.config.name)}`) && !keep.has(port))
          await removeMacSpoofCheck(port, conf.nftTable);
      }
    }
  } catch (e) {
    errors.push(`nftables: ${(e as Error).message}`);
  }
  if (errors.length > 0) throw new CniError(ipam.code ?? ErrorCode.Internal, `GC finished with errors: ${errors.join("; ")}`);
}

/** STATUS: 50 when an ADD cannot be served — IPAM not ready, or the bridge has no free port. */
async function status(req: Request): Promise<void> {
  const conf = parseBridgeConf(req);
  await withRtnl(undefined, (nl) => {
    const br = nl.linkGet(conf.bridge);
    if (!br) return;
    const ports = nl.linkList().filter((l) => l.masterIndex === br.index).length;
    if (ports >= MAX_BRIDGE_PORTS) {
      throw new CniError(
        ErrorCode.PluginNotAvailable,
        `bridge ${conf.bridge} has ${ports} ports, the kernel's limit is ${MAX_BRIDGE_PORTS}`,
      );
    }
  });
  if (ipamType(req)) await ipamStatus(req);
}

export const bridgePlugin: Plugin = {
  name: "berth-bridge",
  cniArgs: ["IP", "MAC"],
  schema,
  add,
  del,
  check,
  gc,
  status,
};
