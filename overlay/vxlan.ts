// The kernel side of the overlay on rtnetlink: the VXLAN device `berth.<vni>` (learning off,
// local = public IP, bound to the underlay, our port and MTU, the lease's network address as
// /32 and /128, accept_ra 0) and its permanent neighbours, FDB entries and routes.
// A netlink event subscription tells the reconciler when anything on our device changes
// (the device deleted, an entry removed by hand) so drift is repaired at once, not in 5 s.

import { writeFileSync } from "node:fs";
import type { Logger } from "pino";
import { formatIp, parseIp, Subnet } from "../cni/address/address.ts";
import { isNetlinkError } from "../native/netlink/error.ts";
import { type EventSubscription, type RtnlEvent, subscribeEvents } from "../native/netlink/events.ts";
import { Rtnl } from "../native/netlink/socket.ts";
import { Netns } from "../native/netns.ts";
import { sameIp } from "./lease.ts";
import type { DataplaneOp, DataplaneState, ManagedDataplane, VxlanDeviceSpec } from "./reconcile.ts";

export class VxlanDataplane implements ManagedDataplane {
  private ifindex = 0;
  private events: EventSubscription | null = null;

  constructor(
    private readonly rtnl: Rtnl,
    readonly spec: VxlanDeviceSpec,
    private readonly logger: Logger | undefined,
    /** The namespace the device lives in (for /proc/sys and the event socket); null = ours. */
    private readonly netns: Netns | null,
  ) {}

  private isCompatible(link: NonNullable<ReturnType<Rtnl["linkGet"]>>, underlayIndex: number): boolean {
    const v = link.vxlan;
    return (
      link.kind === "vxlan" &&
      v !== undefined &&
      v.vni === this.spec.vni &&
      v.port === this.spec.port &&
      v.local !== undefined &&
      sameIp(v.local, this.spec.local) &&
      v.underlayIndex === underlayIndex &&
      !v.learning
    );
  }

  async ensureDevice(): Promise<boolean> {
    const s = this.spec;
    const underlayIndex = this.rtnl.linkIndex(s.underlayIface, `underlay ${s.underlayIface}`);
    let link = this.rtnl.linkGet(s.name);
    let created = false;
    if (link && !this.isCompatible(link, underlayIndex)) {
      // flannel's rule: an incompatible device (another VNI, port, address or underlay) is replaced.
      this.logger?.warn({ device: s.name, kind: link.kind, vxlan: link.vxlan }, "replacing an incompatible device");
      this.rtnl.linkDel(s.name);
      link = null;
    }
    if (!link) {
      this.rtnl.linkAdd({
        kind: "vxlan",
        name: s.name,
        vni: s.vni,
        port: s.port,
        local: s.local,
        underlay: underlayIndex,
        learning: false,
        mtu: s.mtu,
        mac: s.mac,
      });
      created = true;
      link = this.rtnl.linkGet(s.name);
      if (!link) throw new Error(`${s.name} vanished right after it was created`);
    }
    this.ifindex = link.index;
    const changes: { mtu?: number; mac?: string; up?: boolean } = {};
    if (link.mtu !== s.mtu) changes.mtu = s.mtu;
    if (link.mac?.toLowerCase() !== s.mac.toLowerCase()) changes.mac = s.mac;
    if (Object.keys(changes).length > 0) this.rtnl.linkSet(link.index, changes);
    this.disableAcceptRa();
    this.ensureAddresses();
    if (!link.up) this.rtnl.linkSet(link.index, { up: true });
    return created;
  }

  private disableAcceptRa(): void {
    const write = () => {
      try {
        writeFileSync(`/proc/sys/net/ipv6/conf/${this.spec.name}/accept_ra`, "0");
      } catch (e) {
        // IPv6 disabled on this host: nothing to turn off.
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
      }
    };
    // /proc/sys/net resolves to the namespace of the thread that opens the file.
    if (this.netns) this.netns.enter(write);
    else write();
  }

  private ensureAddresses(): void {
    const hostCidr = (ip: string, len: number) => `${formatIp(parseIp(ip))}/${len}`;
    const want = this.spec.addresses.map((a) => {
      const [ip, len] = a.split("/");
      return hostCidr(ip!, Number(len));
    });
    const clusters = this.spec.clusterNetworks.map((c) => Subnet.parse(c));
    const have = this.rtnl.addrList({ ifindex: this.ifindex });
    const haveSet = new Set(have.map((a) => hostCidr(a.address, a.prefixLength)));
    for (const cidr of want) {
      if (!haveSet.has(cidr)) this.rtnl.addrReplace(this.ifindex, { cidr, nodad: cidr.includes(":") });
    }
    for (const a of have) {
      const host = Subnet.host(parseIp(a.address));
      // Addresses from an older lease would attract traffic for a subnet that is not ours any more.
      if (clusters.some((n) => n.includes(host)) && !want.includes(hostCidr(a.address, a.prefixLength))) {
        this.logger?.info({ device: this.spec.name, address: a.cidr }, "removing a stale address");
        this.rtnl.addrDel(this.ifindex, a.cidr);
      }
    }
  }

  async read(): Promise<DataplaneState> {
    const dev = this.rtnl.linkGet(this.spec.name);
    if (!dev) return { neighbours: [], fdb: [], routes: [] };
    this.ifindex = dev.index;
    const neighbours = this.rtnl
      .neighList({ ifindex: dev.index })
      .filter((n) => n.states.includes("permanent") && n.lladdr)
      .map((n) => ({ ip: n.dst, mac: n.lladdr! }));
    const fdb = this.rtnl
      .fdbList({ ifindex: dev.index })
      .filter((f) => f.self && f.dst !== undefined)
      .map((f) => ({ mac: f.mac, dst: f.dst! }));
    // Only routes someone installed: kernel prefix routes (fe80::/64) are the kernel's business.
    const routes = [4, 6]
      .flatMap((family) => this.rtnl.routeList({ ifindex: dev.index, family: family as 4 | 6 }))
      .filter((r) => r.protocol !== "kernel" && r.dst !== "default" && (r.type === "unicast" || r.type === 1))
      .map((r) => ({ dst: r.dst, gateway: r.gateway ?? "" }));
    return { neighbours, fdb, routes };
  }

  async apply(op: DataplaneOp): Promise<void> {
    const dev = this.ifindex;
    const tolerate = (codes: string[], fn: () => void) => {
      try {
        fn();
      } catch (e) {
        if (!codes.some((c) => isNetlinkError(e, c))) throw e;
      }
    };
    switch (op.op) {
      case "neigh-replace":
        this.rtnl.neighReplace({ dev, dst: op.ip, lladdr: op.mac, state: "permanent" });
        break;
      case "neigh-del":
        tolerate(["ENOENT"], () => this.rtnl.neighDel({ dev, dst: op.ip }));
        break;
      case "fdb-replace":
        this.rtnl.fdbReplace({ dev, mac: op.mac, dst: op.dst, self: true, state: "permanent" });
        break;
      case "fdb-del":
        tolerate(["ENOENT"], () => this.rtnl.fdbDel({ dev, mac: op.mac, dst: op.dst, self: true }));
        break;
      case "route-replace":
        this.rtnl.routeReplace({ dst: op.dst, gateway: op.gateway, dev, onlink: true });
        break;
      case "route-del":
        tolerate(["ESRCH", "ENOENT"], () =>
          this.rtnl.routeDel(op.gateway ? { dst: op.dst, gateway: op.gateway, dev } : { dst: op.dst, dev }),
        );
        break;
    }
  }

  watch(onChange: (what: string) => void): void {
    if (this.events) return;
    this.events = subscribeEvents(
      this.netns ?? undefined,
      ["link", "neigh", "ipv4-route", "ipv6-route", "ipv4-addr", "ipv6-addr"],
      (ev) => {
        const what = this.concerning(ev);
        if (what) onChange(what);
      },
      // Events were dropped: a full reconcile covers whatever we missed.
      () => onChange("overflow"),
    );
  }

  /** Names a change that touches our device, or null. */
  private concerning(ev: RtnlEvent): string | null {
    const index =
      "link" in ev
        ? ev.link.index
        : "addr" in ev
          ? ev.addr.ifindex
          : "route" in ev
            ? ev.route.ifindex
            : (ev.neigh?.ifindex ?? ev.fdb?.ifindex);
    return index === this.ifindex ? ev.type : null;
  }

  close(): void {
    this.events?.close();
    this.events = null;
    this.rtnl.close();
    this.netns?.close();
  }
}

/**
 * Opens the dataplane in the current network namespace (the agent's; `ip netns exec` puts it
 * anywhere) or in `netns` (a name under /run/netns or a path).
 */
export async function openVxlanDataplane(spec: VxlanDeviceSpec, logger?: Logger, netns?: string): Promise<VxlanDataplane> {
  const ns = netns ? Netns.open(netns) : null;
  try {
    return new VxlanDataplane(Rtnl.open(ns ?? undefined), spec, logger, ns);
  } catch (e) {
    ns?.close();
    throw e;
  }
}
