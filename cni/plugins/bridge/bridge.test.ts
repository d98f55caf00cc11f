// berth-bridge against the real kernel, in-process through handleInvocation (the same code
// path the executable and the agent run). Every outcome is read back from the kernel with
// iproute2 / nft / the lease database, never taken from the plugin's own answer.
import { readFileSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { hostLinksStartingWith, invokePlugin, type Outcome, ulaPrefix } from "../../../testing/cni-plugin.ts";
import { bridgeJson, delLink, ipJson, ping, sh } from "../../../testing/kernel.ts";
import { leaseRows } from "../../../testing/leases.ts";
import { Sandbox } from "../../../testing/sandbox.ts";
import { closeLeaseStores } from "../../ipam/host-local/host-local.ts";
import { deleteBridgeTable } from "../../nft/macspoof.ts";
import { deleteTable } from "../../nft/masquerade.ts";
import type { Result } from "../../protocol/types.ts";
import { hostLinkName, networkTag } from "../link-names.ts";
import { bridgePlugin } from "./bridge.ts";

interface Container {
  id: string;
  ns: string;
  path: string;
  ifname: string;
}

let sb: Sandbox;
let v4: { subnet: string; base: string };
let v6Prefix: string;
let network: string;
let containers = 0;

beforeEach(() => {
  sb = new Sandbox();
  v4 = sb.allocateSubnet(24);
  v6Prefix = ulaPrefix(1);
  network = `${sb.prefix}-net`;
  containers = 0;
});

afterEach(async () => {
  closeLeaseStores();
  sb.cleanup();
  // Host veths are named bv<network tag>…, without the test prefix: sweep them by tag.
  for (const l of hostVeths()) delLink(l);
  await deleteTable(sb.prefix);
  await deleteBridgeTable(sb.prefix);
});

/** Whether this kernel has bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING). */
function kernelHasVlanFiltering(): boolean {
  const probe = `${sb.prefix}vf`;
  try {
    sh("ip", ["link", "add", probe, "type", "bridge", "vlan_filtering", "1"]);
    delLink(probe);
    return true;
  } catch {
    return false;
  }
}

function conf(extra: Record<string, unknown> = {}, ipam: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    cniVersion: "1.1.0",
    name: network,
    type: "berth-bridge",
    bridge: sb.bridgeName,
    nftTable: sb.prefix,
    ...extra,
    ipam: { type: "berth-host-local", dataDir: sb.dataDir, ranges: [[{ subnet: v4.subnet }]], ...ipam },
  };
}

function dualStackIpam(): Record<string, unknown> {
  return { ranges: [[{ subnet: v4.subnet }], [{ subnet: `${v6Prefix}::/64` }]] };
}

function container(): Container {
  const { name, path } = sb.createNetns("c");
  return { id: `${sb.prefix}-ctr${containers++}`, ns: name, path, ifname: "eth0" };
}

async function cni(command: string, config: Record<string, unknown>, c: Partial<Container> & { id: string }): Promise<Outcome> {
  return invokePlugin(bridgePlugin, command, config, c);
}

async function add(config: Record<string, unknown>, c: Container): Promise<Result> {
  const r = await cni("ADD", config, c);
  expect(r.exitCode, JSON.stringify(r.json)).toBe(0);
  return r.json;
}

async function ok(command: string, config: Record<string, unknown>, c: Partial<Container> & { id: string }): Promise<void> {
  const r = await cni(command, config, c);
  expect(r.exitCode, `${command}: ${JSON.stringify(r.json)}`).toBe(0);
}

function withPrev(config: Record<string, unknown>, prev: Result): Record<string, unknown> {
  return { ...config, prevResult: prev };
}

/** Host links of this test's network (bv<tag>…), as the kernel lists them. */
function hostVeths(): string[] {
  return hostLinksStartingWith(`bv${networkTag(network)}`);
}

/** Leases of this test's network, read straight from the SQLite file. */
function leases(): { ip: string; container_id: string }[] {
  return leaseRows(sb.dataDir, network);
}

interface AddrInfo {
  family: string;
  local: string;
  prefixlen: number;
  tentative?: boolean;
  scope: string;
}
interface LinkJson {
  ifname: string;
  address: string;
  mtu: number;
  master?: string;
  operstate: string;
  addr_info: AddrInfo[];
  linkinfo?: { info_kind?: string; info_slave_data?: Record<string, unknown>; info_data?: Record<string, unknown> };
}

function linkIn(ns: string | undefined, name: string): LinkJson | undefined {
  try {
    return ipJson<LinkJson>(["addr", "show", "dev", name], ns)[0];
  } catch {
    return undefined; // "Device does not exist"
  }
}

function globalAddrs(l: LinkJson | undefined): string[] {
  return (l?.addr_info ?? []).filter((a) => a.scope === "global").map((a) => `${a.local}/${a.prefixlen}`);
}

function nftText(family: "inet" | "bridge"): string {
  try {
    return sh("nft", ["list", "table", family, sb.prefix]);
  } catch {
    return ""; // no table: nothing of ours is there
  }
}

const ipOf = (cidr: string) => cidr.split("/")[0]!;

describe("berth-bridge ADD", () => {
  it("creates what the result says: dual-stack addresses (v6 not tentative), MAC, MTU, master, gateway on the bridge", async () => {
    const c = container();
    const config = conf({ isGateway: true, mtu: 1400 }, dualStackIpam());
    const res = await add(config, c);

    expect(res.cniVersion).toBe("1.1.0");
    const [brIf, hostIf, podIf] = res.interfaces!;
    expect(brIf!.name).toBe(sb.bridgeName);
    expect(podIf).toMatchObject({ name: "eth0", sandbox: c.path, mtu: 1400 });
    expect(res.ips!.map((i) => i.interface)).toEqual([2, 2]);

    const pod = linkIn(c.ns, "eth0")!;
    expect(pod.address).toBe(podIf!.mac);
    expect(pod.mtu).toBe(1400);
    expect(globalAddrs(pod).sort()).toEqual(res.ips!.map((i) => i.address).sort());
    const v6 = pod.addr_info.find((a) => a.family === "inet6" && a.scope === "global")!;
    expect(v6.local.startsWith(v6Prefix)).toBe(true);
    expect(v6.tentative).toBeUndefined();

    const host = ipJson<LinkJson>(["link", "show", "dev", hostIf!.name])[0]!;
    expect(host.master).toBe(sb.bridgeName);
    expect(host.address).toBe(hostIf!.mac);
    expect(host.mtu).toBe(1400);
    expect(host.operstate).not.toBe("DOWN");
    // Set, not random (1): udev's MACAddressPolicy=persistent rewrites random MACs after the fact.
    expect(readFileSync(`/sys/class/net/${hostIf!.name}/addr_assign_type`, "utf8").trim()).toBe("3");

    const br = linkIn(undefined, sb.bridgeName)!;
    expect(br.address).toBe(brIf!.mac);
    expect(globalAddrs(br).sort()).toEqual([`${v4.base}.1/24`, `${v6Prefix}::1/64`].sort());
    expect(res.ips!.map((i) => i.gateway).sort()).toEqual([`${v4.base}.1`, `${v6Prefix}::1`].sort());
    expect(
      leases()
        .map((l) => l.ip)
        .sort(),
    ).toEqual(res.ips!.map((i) => ipOf(i.address)).sort());
  });

  it("replaces a stale host end whose DEL never ran; a repeated ADD fails without touching the live pair", async () => {
    const c = container();
    const hostName = hostLinkName("bv", network, c.id, c.ifname);
    const orphan = `${sb.prefix}or`;
    sh("ip", ["link", "add", hostName, "type", "veth", "peer", "name", orphan]);
    const res = await add(conf(), c);
    expect(res.interfaces![1]!.name).toBe(hostName);
    expect(linkIn(undefined, orphan)).toBeUndefined(); // the old pair went with its host end
    const host = ipJson<{ master?: string; link_netnsid?: number }>(["link", "show", "dev", hostName])[0]!;
    expect(host.master).toBe(sb.bridgeName);
    expect(host.link_netnsid).toBeDefined(); // its peer is in the container now
    expect(globalAddrs(linkIn(c.ns, "eth0"))).toEqual([res.ips![0]!.address]);

    const again = await cni("ADD", conf(), c);
    expect(again.exitCode).toBe(1);
    expect(again.json).toMatchObject({ code: 7, msg: expect.stringContaining("already exists") });
    expect(ipJson<{ address: string }>(["link", "show", "dev", hostName])[0]!.address).toBe(res.interfaces![1]!.mac);
    expect(leases().map((l) => l.ip)).toEqual([ipOf(res.ips![0]!.address)]);
  });

  it("carries traffic between two containers and to the gateway, IPv4 and IPv6", async () => {
    const a = container();
    const b = container();
    const config = conf({ isGateway: true }, dualStackIpam());
    const ra = await add(config, a);
    const rb = await add(config, b);
    for (const ip of rb.ips!) expect(ping(a.ns, ipOf(ip.address)), `a → ${ip.address}`).toBe(true);
    for (const ip of ra.ips!) expect(ping(b.ns, ipOf(ip.address)), `b → ${ip.address}`).toBe(true);
    expect(ping(a.ns, `${v4.base}.1`)).toBe(true);
    expect(ping(b.ns, `${v6Prefix}::1`)).toBe(true);
  });

  it("isDefaultGateway installs default routes via the bridge for both families", async () => {
    const c = container();
    const res = await add(conf({ isDefaultGateway: true }, dualStackIpam()), c);
    const r4 = ipJson<{ dst: string; gateway?: string; dev: string }>(["-4", "route", "show", "default"], c.ns);
    const r6 = ipJson<{ dst: string; gateway?: string; dev: string }>(["-6", "route", "show", "default"], c.ns);
    expect(r4).toEqual([expect.objectContaining({ gateway: `${v4.base}.1`, dev: "eth0" })]);
    expect(r6).toEqual([expect.objectContaining({ gateway: `${v6Prefix}::1`, dev: "eth0" })]);
    expect(res.routes).toEqual(
      expect.arrayContaining([
        { dst: "0.0.0.0/0", gw: `${v4.base}.1` },
        { dst: "::/0", gw: `${v6Prefix}::1` },
      ]),
    );
    // isDefaultGateway implies isGateway: the bridge holds the gateway addresses.
    expect(globalAddrs(linkIn(undefined, sb.bridgeName)).length).toBe(2);
  });

  it("ipMasq: one masquerade element per address in the nft table, removed by DEL", async () => {
    const c = container();
    const config = conf({ isGateway: true, ipMasq: true }, dualStackIpam());
    const res = await add(config, c);
    const text = nftText("inet");
    for (const ip of res.ips!) expect(text).toContain(`${ipOf(ip.address)} comment`);
    expect(text).toContain(`ip daddr ${v4.subnet} return`);
    expect(text).toContain("masquerade");
    await ok("CHECK", withPrev(config, res), c);
    await ok("DEL", config, c);
    const after = nftText("inet");
    for (const ip of res.ips!) expect(after).not.toContain(ipOf(ip.address));
  });

  it("macspoofchk: frames from another MAC are dropped at the bridge port", async () => {
    const a = container();
    const b = container();
    const config = conf({ macspoofchk: true });
    const ra = await add(config, a);
    const rb = await add(config, b);
    const hostA = ra.interfaces![1]!.name;
    const text = nftText("bridge");
    expect(text).toContain(`"${hostA}" : jump ms_${hostA}`);
    expect(text).toContain(`ether saddr != ${ra.interfaces![2]!.mac}`);
    const peer = ipOf(rb.ips![0]!.address);
    expect(ping(a.ns, peer)).toBe(true);
    sh("ip", ["-n", a.ns, "link", "set", "eth0", "address", "02:00:00:00:be:ef"]);
    sh("ip", ["-n", b.ns, "neigh", "flush", "all"]);
    expect(ping(a.ns, peer)).toBe(false);
    await ok("DEL", config, a);
    expect(nftText("bridge")).not.toContain(hostA);
  });

  it("hairpinMode sets hairpin on the bridge port", async () => {
    const a = container();
    const ra = await add(conf({ hairpinMode: true }), a);
    const port = bridgeJson<{ ifname: string; hairpin?: boolean }>(["-d", "link", "show", "dev", ra.interfaces![1]!.name])[0]!;
    expect(port.hairpin).toBe(true);
  });

  it("vlan: the port gets the VLAN as untagged PVID on a vlan_filtering bridge (or a clear error where the kernel lacks it)", async () => {
    const b = container();
    const vconf = conf({ vlan: 42, preserveDefaultVlan: false });
    if (!kernelHasVlanFiltering()) {
      // This kernel is built without CONFIG_BRIDGE_VLAN_FILTERING: a typed error, nothing left.
      const r = await cni("ADD", vconf, b);
      expect(r.exitCode).toBe(1);
      expect(r.json.msg).toMatch(/create bridge .*EOPNOTSUPP/);
      expect(linkIn(undefined, sb.bridgeName)).toBeUndefined();
      expect(leases()).toEqual([]);
      return;
    }
    const rb = await add(vconf, b);
    const br = ipJson<LinkJson>(["link", "show", "dev", sb.bridgeName])[0]!;
    expect(br.linkinfo?.info_data?.vlan_filtering).toBe(1);
    const vlans = bridgeJson<{ ifname: string; vlans: { vlan: number; flags?: string[] }[] }>([
      "vlan",
      "show",
      "dev",
      rb.interfaces![1]!.name,
    ])[0]!.vlans;
    expect(vlans).toEqual([{ vlan: 42, flags: ["PVID", "Egress Untagged"] }]);
  });

  it("forceAddress: a different address in the gateway's subnet fails ADD cleanly, or is replaced when set", async () => {
    sh("ip", ["link", "add", sb.bridgeName, "type", "bridge"]);
    sh("ip", ["addr", "add", `${v4.base}.254/24`, "dev", sb.bridgeName]);
    const a = container();
    const refused = await cni("ADD", conf({ isGateway: true }), a);
    expect(refused.exitCode).toBe(1);
    expect(refused.json.code).toBe(7);
    expect(refused.json.msg).toContain("forceAddress");
    expect(hostVeths()).toEqual([]);
    expect(leases()).toEqual([]);
    expect(linkIn(a.ns, "eth0")).toBeUndefined();

    await add(conf({ isGateway: true, forceAddress: true }), a);
    expect(globalAddrs(linkIn(undefined, sb.bridgeName))).toEqual([`${v4.base}.1/24`]);
  });

  it("a failed ADD half-way (route via an unreachable gateway) leaves no link, lease or rule behind", async () => {
    const c = container();
    const config = conf(
      { isGateway: true, ipMasq: true, macspoofchk: true },
      { routes: [{ dst: "198.51.100.0/24", gw: "203.0.113.9" }] },
    );
    const r = await cni("ADD", config, c);
    expect(r.exitCode).toBe(1);
    expect(r.json.code).toBe(999);
    expect(r.json.msg).toMatch(/configure eth0/);
    expect(hostVeths()).toEqual([]);
    expect(leases()).toEqual([]);
    expect(linkIn(c.ns, "eth0")).toBeUndefined();
    expect(nftText("inet")).not.toContain(v4.base);
    expect(nftText("bridge")).not.toMatch(/"bv/);
  });
});

describe("berth-bridge DEL", () => {
  it("is idempotent: twice, after the netns is gone, and without CNI_NETNS", async () => {
    const config = conf({ isGateway: true, ipMasq: true });
    const a = container();
    await add(config, a);
    await ok("DEL", config, a);
    await ok("DEL", config, a);
    expect(hostVeths()).toEqual([]);
    expect(leases()).toEqual([]);

    const b = container();
    const rb = await add(config, b);
    sb.deleteNetns(b.ns);
    await ok("DEL", config, b);
    await ok("DEL", config, { id: b.id, ifname: "eth0" });
    expect(leases()).toEqual([]);
    expect(nftText("inet")).not.toContain(ipOf(rb.ips![0]!.address));

    const c = container();
    await add(config, c);
    await ok("DEL", config, { id: c.id, ifname: "eth0" });
    // Without the netns, the host end goes and takes the container end with it.
    expect(hostVeths()).toEqual([]);
    expect(linkIn(c.ns, "eth0")).toBeUndefined();
    expect(leases()).toEqual([]);
    expect(nftText("inet")).not.toMatch(/comment/);
  });
});

describe("berth-bridge CHECK", () => {
  it("passes after ADD, fails once the address, the route or the interface is deleted by hand", async () => {
    const config = conf({ isDefaultGateway: true });
    const cases: [string, (c: Container, r: Result) => void][] = [
      ["address", (c, r) => sh("ip", ["-n", c.ns, "addr", "del", r.ips![0]!.address, "dev", "eth0"])],
      ["route", (c) => sh("ip", ["-n", c.ns, "route", "del", "default"])],
      ["interface", (_c, r) => sh("ip", ["link", "del", r.interfaces![1]!.name])],
    ];
    for (const [what, breakIt] of cases) {
      const c = container();
      const res = await add(config, c);
      await ok("CHECK", withPrev(config, res), c);
      breakIt(c, res);
      const r = await cni("CHECK", withPrev(config, res), c);
      expect(r.exitCode, `CHECK after deleting the ${what}`).toBe(1);
      expect(r.json.msg).toMatch(/CHECK: /);
    }
  });
});

describe("berth-bridge GC and STATUS", () => {
  it("GC removes host veths, leases and masquerade of attachments not valid, keeps the valid ones", async () => {
    const config = conf({ isGateway: true, ipMasq: true });
    const keep = container();
    const gone = container();
    const rk = await add(config, keep);
    const rg = await add(config, gone);
    expect(hostVeths()).toHaveLength(2);
    const gcConf = { ...config, "cni.dev/valid-attachments": [{ containerID: keep.id, ifname: "eth0" }] };
    await ok("GC", gcConf, { id: "" });
    expect(hostVeths()).toEqual([rk.interfaces![1]!.name]);
    expect(leases()).toEqual([{ ip: ipOf(rk.ips![0]!.address), container_id: keep.id }]);
    const text = nftText("inet");
    expect(text).toContain(`${ipOf(rk.ips![0]!.address)} comment`);
    expect(text).not.toContain(`${ipOf(rg.ips![0]!.address)} comment`);
    expect(ping(keep.ns, `${v4.base}.1`)).toBe(true);
  });

  it("GC without the valid-attachments list (libcni when no attachment is valid) removes every attachment", async () => {
    const config = conf({ isGateway: true, ipMasq: true });
    const ra = await add(config, container());
    const rb = await add(config, container());
    expect(hostVeths()).toHaveLength(2);
    await ok("GC", config, { id: "" });
    expect(hostVeths()).toEqual([]);
    expect(leases()).toEqual([]);
    const text = nftText("inet");
    for (const r of [ra, rb]) expect(text).not.toContain(`${ipOf(r.ips![0]!.address)} comment`);
  });

  it("STATUS is ready while addresses are free and reports 50 once the pool is exhausted", async () => {
    const config = conf({}, { ranges: [[{ subnet: v4.subnet, rangeStart: `${v4.base}.10`, rangeEnd: `${v4.base}.10` }]] });
    await ok("STATUS", config, { id: "" });
    await add(config, container());
    const r = await cni("STATUS", config, { id: "" });
    expect(r.exitCode).toBe(1);
    expect(r.json.code).toBe(50);
    const again = await cni("ADD", config, container());
    expect(again.exitCode).toBe(1);
    expect(hostVeths()).toHaveLength(1);
  });
});
