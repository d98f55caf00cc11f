// berth-ptp against the real kernel, in-process through handleInvocation. A routed
// point-to-point veth per container: read back the container's addresses and routes, the host
// end's gateway address and /32 route, traffic between containers through the host, and the
// cleanup paths (DEL, CHECK, GC, half-way ADD failure) from the kernel and the lease database.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { hostLinksStartingWith, invokePlugin, type Outcome, type Reply, ulaPrefix } from "../../../testing/cni-plugin.ts";
import { delLink, ipJson, ping, sh } from "../../../testing/kernel.ts";
import { leaseRows } from "../../../testing/leases.ts";
import { Sandbox } from "../../../testing/sandbox.ts";
import { closeLeaseStores } from "../../ipam/host-local/host-local.ts";
import { deleteTable } from "../../nft/masquerade.ts";
import { networkTag } from "../link-names.ts";
import { ptpPlugin } from "./ptp.ts";

interface Container {
  id: string;
  ns: string;
  path: string;
}

let sb: Sandbox;
let v4: { subnet: string; base: string };
let v6Prefix: string;
let network: string;
let count = 0;

beforeEach(() => {
  sb = new Sandbox();
  v4 = sb.allocateSubnet(24);
  v6Prefix = ulaPrefix(2);
  network = `${sb.prefix}-ptp`;
});

afterEach(async () => {
  closeLeaseStores();
  sb.cleanup();
  for (const l of hostVeths()) delLink(l);
  await deleteTable(sb.prefix);
});

function conf(extra: Record<string, unknown> = {}, ipam: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    cniVersion: "1.1.0",
    name: network,
    type: "berth-ptp",
    nftTable: sb.prefix,
    ...extra,
    ipam: {
      type: "berth-host-local",
      dataDir: sb.dataDir,
      ranges: [[{ subnet: v4.subnet }], [{ subnet: `${v6Prefix}::/64` }]],
      ...ipam,
    },
  };
}

function container(): Container {
  const { name, path } = sb.createNetns("p");
  return { id: `${sb.prefix}-ctr${count++}`, ns: name, path };
}

async function cni(command: string, config: Record<string, unknown>, c: { id: string; path?: string }): Promise<Outcome> {
  return invokePlugin(ptpPlugin, command, config, c);
}

async function ok(command: string, config: Record<string, unknown>, c: { id: string; path?: string }): Promise<Reply> {
  const r = await cni(command, config, c);
  expect(r.exitCode, `${command}: ${JSON.stringify(r.json)}`).toBe(0);
  return r.json;
}

function hostVeths(): string[] {
  return hostLinksStartingWith(`bp${networkTag(network)}`);
}

function leases(): string[] {
  return leaseRows(sb.dataDir, network).map((r) => r.ip);
}

interface AddrJson {
  ifname: string;
  address: string;
  mtu: number;
  addr_info: { family: string; local: string; prefixlen: number; scope: string; tentative?: boolean }[];
}
interface RouteJson {
  dst: string;
  gateway?: string;
  dev: string;
  scope?: string;
}

function addrs(ns: string | undefined, dev: string): string[] {
  return ipJson<AddrJson>(["addr", "show", "dev", dev], ns)[0]!
    .addr_info.filter((a) => a.scope !== "link")
    .map((a) => `${a.local}/${a.prefixlen}`)
    .sort();
}

const ipOf = (cidr: string) => cidr.split("/")[0]!;

describe("berth-ptp", () => {
  it("ADD: container address without a connected route, gw as link route, host end holds gw/32 and a /32 route back", async () => {
    const c = container();
    const res = await ok("ADD", conf({ mtu: 1450 }), c);
    const [hostIf, podIf] = res.interfaces!;
    const [ip4, ip6] = res.ips!;
    expect(ip4!.gateway).toBe(`${v4.base}.1`);
    expect(ip6!.gateway).toBe(`${v6Prefix}::1`);

    const pod = ipJson<AddrJson>(["addr", "show", "dev", "eth0"], c.ns)[0]!;
    expect(pod.address).toBe(podIf!.mac);
    expect(pod.mtu).toBe(1450);
    expect(addrs(c.ns, "eth0")).toEqual([ip4!.address, ip6!.address].sort());
    expect(pod.addr_info.some((a) => a.scope === "global" && a.tentative)).toBe(false);

    const routes4 = ipJson<RouteJson>(["-4", "route", "show"], c.ns);
    expect(routes4).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ dst: `${v4.base}.1`, dev: "eth0", scope: "link" }),
        expect.objectContaining({ dst: v4.subnet, gateway: `${v4.base}.1`, dev: "eth0" }),
      ]),
    );
    // noprefixroute: no "proto kernel" connected route for the /24.
    expect(routes4.filter((r) => r.dst === v4.subnet)).toHaveLength(1);

    expect(addrs(undefined, hostIf!.name)).toEqual([`${v4.base}.1/32`, `${v6Prefix}::1/128`].sort());
    const hostRoutes = ipJson<RouteJson>(["route", "show", "dev", hostIf!.name]).map((r) => r.dst);
    expect(hostRoutes).toContain(ipOf(ip4!.address));
    const host6 = ipJson<RouteJson>(["-6", "route", "show", "dev", hostIf!.name]).map((r) => r.dst);
    expect(host6).toContain(ipOf(ip6!.address));
    expect(leases()).toEqual([ipOf(ip4!.address), ipOf(ip6!.address)].sort());
  });

  it("routes traffic between two containers through the host and to the gateway, v4 and v6", async () => {
    const a = container();
    const b = container();
    await ok("ADD", conf(), a);
    const rb = await ok("ADD", conf(), b);
    // Immediately, with no retry: the first packet to a new pod must not be lost to DAD.
    for (const ip of rb.ips!) expect(ping(a.ns, ipOf(ip.address), 1), `a → ${ip.address}`).toBe(true);
    expect(ping(b.ns, `${v4.base}.1`)).toBe(true);
    expect(ping(b.ns, `${v6Prefix}::1`)).toBe(true);
  });

  it("ipMasq elements live with the attachment; CHECK passes, DEL twice and after netns loss leaves nothing", async () => {
    const config = conf({ ipMasq: true });
    const a = container();
    const ra = await ok("ADD", config, a);
    const table = () => {
      try {
        return sh("nft", ["list", "table", "inet", sb.prefix]);
      } catch {
        return "";
      }
    };
    for (const ip of ra.ips!) expect(table()).toContain(`${ipOf(ip.address)} comment`);
    await ok("CHECK", { ...config, prevResult: ra }, a);
    await ok("DEL", config, a);
    await ok("DEL", config, a);
    expect(table()).not.toContain("comment");
    expect(hostVeths()).toEqual([]);
    expect(leases()).toEqual([]);

    const b = container();
    await ok("ADD", config, b);
    sb.deleteNetns(b.ns);
    await ok("DEL", config, b);
    await ok("DEL", config, { id: b.id });
    expect(table()).not.toContain("comment");
    expect(hostVeths()).toEqual([]);
    expect(leases()).toEqual([]);
  });

  it("CHECK fails once the container address, the host route or the host end is deleted by hand", async () => {
    const config = conf();
    const cases: [string, (c: Container, r: Reply) => void][] = [
      ["container address", (c, r) => sh("ip", ["-n", c.ns, "addr", "del", r.ips![0]!.address, "dev", "eth0"])],
      ["host route", (_c, r) => sh("ip", ["route", "del", `${ipOf(r.ips![0]!.address)}/32`])],
      ["host end", (_c, r) => sh("ip", ["link", "del", r.interfaces![0]!.name])],
    ];
    for (const [what, breakIt] of cases) {
      const c = container();
      const res = await ok("ADD", config, c);
      await ok("CHECK", { ...config, prevResult: res }, c);
      breakIt(c, res);
      const r = await cni("CHECK", { ...config, prevResult: res }, c);
      expect(r.exitCode, `CHECK after deleting the ${what}`).toBe(1);
      expect(r.json.msg).toMatch(/CHECK: /);
    }
  });

  it("GC drops host ends, leases and masquerade of attachments not valid and keeps the valid one working", async () => {
    const config = conf({ ipMasq: true });
    const keep = container();
    const gone = container();
    const rk = await ok("ADD", config, keep);
    await ok("ADD", config, gone);
    await ok("GC", { ...config, "cni.dev/valid-attachments": [{ containerID: keep.id, ifname: "eth0" }] }, { id: "" });
    expect(hostVeths()).toEqual([rk.interfaces![0]!.name]);
    expect(leases()).toEqual(rk.ips!.map((i) => ipOf(i.address)).sort());
    const text = sh("nft", ["list", "table", "inet", sb.prefix]);
    expect(text.match(/comment/g)).toHaveLength(2);
    expect(ping(keep.ns, `${v4.base}.1`)).toBe(true);
    await ok("STATUS", config, { id: "" });
  });

  it("a failed ADD half-way (IPAM route via an unreachable gateway) leaves no link, lease or rule", async () => {
    const c = container();
    const config = conf({ ipMasq: true }, { routes: [{ dst: "198.51.100.0/24", gw: "203.0.113.9" }] });
    const r = await cni("ADD", config, c);
    expect(r.exitCode).toBe(1);
    expect(r.json.code).toBe(999);
    expect(hostVeths()).toEqual([]);
    expect(leases()).toEqual([]);
    expect(ipJson<{ ifname: string }>(["link", "show"], c.ns).map((l) => l.ifname)).toEqual(["lo"]);
  });

  it("refuses a config without ipam (code 7, naming the key)", async () => {
    const { ipam: _ipam, ...noIpam } = conf();
    const r = await cni("ADD", noIpam, container());
    expect(r.exitCode).toBe(1);
    expect(r.json.code).toBe(7);
    expect(r.json.msg).toContain("ipam");
  });
});
