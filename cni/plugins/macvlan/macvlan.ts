// berth-macvlan: a macvlan link on a host interface, created directly inside the container
// netns under its final name (no create-then-move: a move costs an RCU barrier). IPAM is
// optional; without it the interface is L2 only. Reference option names: master, mode, mtu, mac.
import type { MacvlanMode } from "../../../native/netlink/link.ts";
import type { Rtnl } from "../../../native/netlink/socket.ts";
import { requestedMac } from "../../protocol/config.ts";
import { configSchema, field, validateConfig } from "../../protocol/schema.ts";
import {
  awaitDurable,
  CniError,
  ErrorCode,
  type IpConfig,
  type Plugin,
  type Request,
  type Result,
} from "../../protocol/types.ts";
import { openContainerNetns, openNetnsIfPresent, withRtnl } from "../container-netns.ts";
import { kernelError, settle } from "../errors.ts";
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus, ipamType } from "../ipam-client.ts";
import { deleteLinkIfPresent } from "../link-removal.ts";
import { checkSandbox, configureSandbox, type SandboxLink } from "../sandbox.ts";
import { Undo } from "../undo.ts";

const schema = configSchema({
  master: field
    .string({ pattern: /^[A-Za-z0-9_.@-]{1,15}$/, patternName: "an interface name" })
    .describe("The host interface the macvlan hangs off (default: the interface of the host's IPv4 default route)."),
  mode: field
    .string({ oneOf: ["bridge", "private", "vepa", "passthru"] })
    .default("bridge")
    .describe("macvlan mode: how containers on the same master reach each other."),
  mtu: field.int(68, 65535).describe("MTU of the container's interface (default: the master's)."),
  mac: field.mac().describe("MAC of the container's interface (runtimeConfig.mac and CNI_ARGS MAC win over it)."),
  linkInContainer: field
    .boolean()
    .default(false)
    .unsupported(true, "the master must be a host interface")
    .describe("Whether master lives in the container's namespace."),
  enabledad: field.boolean().default(false).describe("Run IPv6 duplicate address detection on the container's addresses."),
});

/** The interface of the host's default route: the reference plugin's default master. */
function defaultRouteInterface(nl: Rtnl): string {
  const def = nl.routeList({ family: 4 }).find((r) => r.dst === "default" && r.table === 254 && r.ifindex !== undefined);
  const link = def?.ifindex !== undefined ? nl.linkGet(def.ifindex) : null;
  if (!link)
    throw new CniError(
      ErrorCode.InvalidConfig,
      `invalid config: "master" is not set and the host has no default route to take it from`,
    );
  return link.name;
}

async function add(req: Request): Promise<Result> {
  const conf = validateConfig(req.config, schema);
  const mac = requestedMac(req) ?? conf.mac;
  const undo = new Undo();
  const ns = openContainerNetns(req);
  try {
    return await withRtnl(undefined, req.host, async (hostNl) =>
      withRtnl(ns, req.host, (podNl) =>
        undo.guard(async () => {
          if (podNl.linkGet(req.ifname)) {
            throw new CniError(ErrorCode.InvalidConfig, `interface ${req.ifname} already exists in ${req.netns}`);
          }
          const masterName = conf.master ?? defaultRouteInterface(hostNl);
          const master = hostNl.linkGet(masterName);
          if (!master)
            throw new CniError(ErrorCode.InvalidConfig, `invalid config: "master": interface ${masterName} does not exist`);
          if (conf.mtu !== undefined && conf.mtu > master.mtu) {
            throw new CniError(
              ErrorCode.InvalidConfig,
              `invalid config: "mtu" ${conf.mtu} is larger than master ${masterName}'s MTU ${master.mtu}`,
            );
          }
          let ipam: Result | undefined;
          if (ipamType(req)) {
            ipam = await ipamAdd(req);
            undo.push(() => ipamDel(req));
          }
          try {
            hostNl.linkAdd({
              kind: "macvlan",
              name: req.ifname,
              parent: master.index,
              mode: conf.mode as MacvlanMode,
              mtu: conf.mtu,
              mac,
              netns: ns,
            });
          } catch (e) {
            throw kernelError(`create macvlan ${req.ifname} on ${masterName}`, e);
          }
          undo.push(() => deleteLinkIfPresent(podNl, req.ifname));
          const ips: IpConfig[] = (ipam?.ips ?? []).map((ip) => ({ address: ip.address, gateway: ip.gateway }));
          let pod: SandboxLink;
          try {
            pod = await configureSandbox(podNl, req.ifname, ips, ipam?.routes ?? [], { nodad: !conf.enabledad });
          } catch (e) {
            throw kernelError(`configure ${req.ifname} in ${req.netns}`, e);
          }
          // The lease must be on disk before anyone sees the result; a failure here is still undone.
          await awaitDurable(req);
          return {
            cniVersion: req.config.cniVersion,
            interfaces: [{ name: req.ifname, mac: pod.mac, mtu: pod.mtu, sandbox: req.netns }],
            ips: ips.map((ip) => ({ ...ip, interface: 0 })),
            routes: ipam?.routes ?? [],
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
  validateConfig(req.config, schema);
  // A store that cannot be read does not keep the link: it goes, and the error is reported after.
  const released = await settle(async () => {
    if (ipamType(req)) await ipamDel(req);
  });
  const ns = openNetnsIfPresent(req);
  if (ns) {
    try {
      await withRtnl(ns, (nl) => deleteLinkIfPresent(nl, req.ifname));
    } finally {
      ns.close();
    }
  }
  released.rethrow();
}

async function check(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const prev = req.config.prevResult;
  if (!prev) throw new CniError(ErrorCode.InvalidConfig, "CHECK needs prevResult (the ADD result)");
  if (ipamType(req)) await ipamCheck(req);
  const ns = openContainerNetns(req);
  try {
    await withRtnl(ns, (nl) => {
      const link = checkSandbox(nl, req.ifname, prev, req.netns);
      if (link.kind !== "macvlan")
        throw new CniError(ErrorCode.Internal, `CHECK: ${req.ifname} is a ${link.kind ?? "plain"} link, not macvlan`);
      if (link.macvlan && link.macvlan.mode !== conf.mode) {
        throw new CniError(
          ErrorCode.Internal,
          `CHECK: ${req.ifname} is in mode ${link.macvlan.mode}, the config says ${conf.mode}`,
        );
      }
    });
  } finally {
    ns.close();
  }
}

async function gc(req: Request): Promise<void> {
  // The links live and die with their netns; only IPAM holds state to collect.
  if (ipamType(req)) await ipamGc(req);
}

async function status(req: Request): Promise<void> {
  if (ipamType(req)) await ipamStatus(req);
}

export const macvlanPlugin: Plugin = { name: "berth-macvlan", cniArgs: ["IP", "MAC"], schema, add, del, check, gc, status };
