// berth-ptp: a point-to-point veth per container, routed (no bridge). Accepts the reference
// ptp plugin's option names. Container side: the IPAM address without a connected route,
// "gw/32 scope link" and everything else via gw. Host side: the gateway as a /32 on the
// host veth (the same address on every veth) and "podIP/32 dev veth".
import { isNetlinkError } from "../../../native/netlink/error.ts";
import type { Rtnl } from "../../../native/netlink/socket.ts";
import { writeSysctl } from "../../../native/sysctl.ts";
import { familyOf, firstHost, ipOf, normalizeCidr, subnetOf } from "../../address/address.ts";
import { DEFAULT_TABLE } from "../../nft/nft.ts";
import { gcAttachments, requestedMac } from "../../protocol/config.ts";
import { configSchema, field, validateConfig } from "../../protocol/schema.ts";
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
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus } from "../ipam-client.ts";
import { hostLinkName } from "../link-names.ts";
import { checkSandbox, configureSandbox, type SandboxLink } from "../sandbox.ts";
import { Undo } from "../undo.ts";
import { createVethPair, removePair, whileCreating } from "../veth.ts";

const schema = configSchema({
  ipMasq: field
    .boolean()
    .default(false)
    .describe("Masquerade traffic from the container's addresses to destinations outside its subnet."),
  ipMasqBackend: field
    .string({ oneOf: ["nftables", "iptables"] })
    .unsupported("iptables", "berth uses nftables only")
    .describe("Backend for ipMasq."),
  mtu: field.int(68, 65535).describe("MTU of the veth pair (default: the kernel's, 1500)."),
  enabledad: field.boolean().default(false).describe("Run IPv6 duplicate address detection on the container's addresses."),
  ipam: field.anyObject().require().describe("The IPAM plugin and its options; ptp routes each address through the host."),
  nftTable: field
    .string({ pattern: /^[A-Za-z][A-Za-z0-9_]{0,31}$/, patternName: "an nftables identifier" })
    .default(DEFAULT_TABLE)
    .describe("The nftables table (inet family) for masquerade rules.", { extension: true }),
});

function hostName(req: Request): string {
  return hostLinkName("bp", req.config.name, req.containerId, req.ifname);
}

function hostPrefix(ip: string): string {
  return `${ip}/${familyOf(ip) === 4 ? 32 : 128}`;
}

/** Container routes: gw as a link route, the subnet and IPAM's routes through gw. */
function podRoutes(ips: IpConfig[], ipamRoutes: Route[]): { install: Route[]; report: Route[] } {
  const install: Route[] = [];
  const report: Route[] = [];
  for (const ip of ips) {
    const gw = ip.gateway!;
    install.push({ dst: hostPrefix(gw), scope: 253 });
    const subnet = { dst: subnetOf(ip.address), gw };
    install.push(subnet);
    report.push(subnet);
  }
  for (const r of ipamRoutes) {
    const gw = r.gw ?? ips.find((i) => familyOf(i.address) === familyOf(r.dst))?.gateway;
    const route = { ...r, gw };
    install.push(route);
    report.push(route);
  }
  return { install, report };
}

function configureHost(nl: Rtnl, host: string, index: number, ips: IpConfig[]): void {
  for (const ip of ips) {
    try {
      nl.addrAdd(index, { cidr: hostPrefix(ip.gateway!), nodad: familyOf(ip.address) === 6, noprefixroute: true });
    } catch (e) {
      if (!isNetlinkError(e, "EEXIST")) throw e;
    }
  }
  // Without this the host end's link-local address sits tentative (DAD) for ~2 s, and until
  // then the host cannot resolve the pod as an IPv6 neighbour: a new pod's first v6 packets die.
  if (ips.some((i) => familyOf(i.address) === 6)) writeSysctl(["net", "ipv6", "conf", host, "accept_dad"], "0");
  nl.linkSet(index, { up: true });
  for (const ip of ips) {
    nl.routeReplace({ dst: hostPrefix(ipOf(ip.address)), dev: index, scope: "link", family: familyOf(ip.address) });
  }
  if (ips.some((i) => familyOf(i.address) === 4)) writeSysctl("net.ipv4.ip_forward", "1");
  if (ips.some((i) => familyOf(i.address) === 6)) writeSysctl("net.ipv6.conf.all.forwarding", "1");
}

async function add(req: Request): Promise<Result> {
  const conf = validateConfig(req.config, schema);
  const mac = requestedMac(req);
  const undo = new Undo();
  const ns = openContainerNetns(req);
  const host = hostName(req);
  try {
    return await withRtnl(undefined, req.host, async (hostNl) =>
      withRtnl(ns, req.host, (podNl) =>
        undo.guard(async () => {
          // Before IPAM: a repeated ADD must fail without touching the attachment that exists.
          if (await podNl.linkGetAsync(req.ifname)) {
            throw new CniError(ErrorCode.InvalidConfig, `interface ${req.ifname} already exists in ${req.netns}`);
          }
          // The veth is made on the thread pool while IPAM allocates here.
          const veth = createVethPair(hostNl, req, ns, host, { mtu: conf.mtu, mac }, undo);
          const [hostEnd, ipam] = await whileCreating(veth, async () => {
            const r = await ipamAdd(req);
            undo.push(() => ipamDel(req));
            return r;
          });
          const ips: IpConfig[] = (ipam.ips ?? []).map((ip) => ({
            address: ip.address,
            gateway: ip.gateway ?? firstHost(ip.address),
          }));
          for (const ip of ips) {
            if (ipOf(ip.address) === ip.gateway) {
              throw new CniError(ErrorCode.InvalidConfig, `IPAM gave ${ip.address} whose address is also its gateway`);
            }
          }

          const routes = podRoutes(ips, ipam.routes ?? []);
          let pod: SandboxLink;
          try {
            pod = await configureSandbox(
              podNl,
              req.ifname,
              ips,
              routes.install,
              { nodad: !conf.enabledad, noprefixroute: true },
              hostEnd.pod,
            );
            configureHost(hostNl, host, hostEnd.index, ips);
          } catch (e) {
            throw kernelError(`configure point-to-point link ${host}/${req.ifname}`, e);
          }
          if (conf.ipMasq) {
            await addAttachmentMasq(
              req,
              ips.map((i) => i.address),
              conf.nftTable,
              undo,
            );
          }
          // The lease must be on disk before anyone sees the result; a failure here is still undone.
          await awaitDurable(req);
          return {
            cniVersion: req.config.cniVersion,
            interfaces: [
              { name: host, mac: hostEnd.mac },
              { name: req.ifname, mac: pod.mac, mtu: pod.mtu, sandbox: req.netns },
            ],
            ips: ips.map((ip) => ({ ...ip, interface: 1 })),
            routes: routes.report,
            dns: ipam.dns ?? req.config.dns,
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
  const conf = validateConfig(req.config, schema);
  // As bridge: the release first; a store that cannot be read does not keep the links.
  const released = await settle(() => ipamDel(req));
  const ns = openNetnsIfPresent(req);
  try {
    const addresses = await withRtnl(undefined, req.host, (hostNl) => removePair(req, ns, hostNl, hostName(req)));
    if (conf.ipMasq) {
      await removeAttachmentMasq(req, addresses, conf.nftTable);
    }
  } finally {
    ns?.close();
  }
  released.rethrow();
}

async function check(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const prev = req.config.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidConfig, "CHECK needs prevResult (the ADD result)");
  await ipamCheck(req);
  const ns = openContainerNetns(req);
  try {
    await withRtnl(ns, (podNl) => {
      checkSandbox(podNl, req.ifname, prev, req.netns);
    });
  } finally {
    ns.close();
  }
  await withRtnl(undefined, (hostNl) => {
    const host = hostNl.linkGet(hostName(req));
    if (!host?.up) throw new CniError(ErrorCode.Internal, `CHECK: host interface ${hostName(req)} is missing or down`);
    const routes = hostNl.routeList({ ifindex: host.index });
    for (const ip of prev.ips ?? []) {
      const dst = normalizeCidr(hostPrefix(ipOf(ip.address)));
      if (!routes.some((r) => r.dst === dst))
        throw new CniError(ErrorCode.Internal, `CHECK: host route ${dst} dev ${host.name} is missing`);
    }
  });
  if (conf.ipMasq) {
    await checkAttachmentMasq(req, prev, conf.nftTable);
  }
}

async function gc(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const valid = gcAttachments(req.config);
  const errors: string[] = [];
  const ipam = await settle(() => ipamGc(req));
  if (ipam.error) errors.push(`IPAM: ${ipam.error.message}`);
  errors.push(...(await gcHostLinks("bp", req.config.name, valid)));
  if (conf.ipMasq) {
    try {
      await gcAttachmentMasq(req, conf.nftTable);
    } catch (e) {
      errors.push(`nftables: ${(e as Error).message}`);
    }
  }
  if (errors.length > 0) throw new CniError(ipam.code ?? ErrorCode.Internal, `GC finished with errors: ${errors.join("; ")}`);
}

async function status(req: Request): Promise<void> {
  validateConfig(req.config, schema);
  await ipamStatus(req);
}

export const ptpPlugin: Plugin = { name: "berth-ptp", cniArgs: ["IP", "MAC"], schema, add, del, check, gc, status };
