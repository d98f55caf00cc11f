import { readdirSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ipJson, testPrefix } from "../../testing/kernel.ts";
import { type ScratchNetns, scratchNetns } from "../../testing/scratch-netns.ts";
import { NetnsError } from "../netns.ts";
import { NetlinkError } from "./error.ts";
import { Rtnl } from "./socket.ts";

let a: ScratchNetns;
let b: ScratchNetns;
let prefix: string;

beforeEach(() => {
  prefix = testPrefix();
  a = scratchNetns(`${prefix}-a`);
  b = scratchNetns(`${prefix}-b`);
});

afterEach(() => {
  a?.close();
  b?.close();
});

function show(name: string, ns: string) {
  const [l] = ipJson(["link", "show", "dev", name], ns);
  return l;
}

function thrown(fn: () => unknown): NetlinkError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(NetlinkError);
    return e as NetlinkError;
  }
  throw new Error("expected a NetlinkError");
}

describe("linkAdd", () => {
  it("returns the new link as the kernel echoes it: index, MAC, and a veth peer's index in its own netns", async () => {
    const made = a.rtnl.linkAdd({ kind: "veth", name: "v0", mac: "02:00:00:00:00:0a", peer: { name: "p0", netns: b.ns } });
    const host = show("v0", a.name);
    const peer = show("p0", b.name);
    expect(made).toMatchObject({ index: host.ifindex, name: "v0", mac: "02:00:00:00:00:0a" });
    expect(made?.linkNetnsId).toBeDefined();
    expect(made?.parentIndex).toBe(peer.ifindex);
    const viaPool = await a.rtnl.linkAddAsync({ kind: "veth", name: "v1", peer: { name: "p1", netns: b.ns } });
    expect(viaPool?.index).toBe(show("v1", a.name).ifindex);
    expect(viaPool?.parentIndex).toBe(show("p1", b.name).ifindex);
    expect((await a.rtnl.linkGetAsync("v1"))?.index).toBe(viaPool?.index);
    expect(await a.rtnl.linkGetAsync("nope0")).toBeNull();
  });

  it("linkGetAsync and a batch's runAsync run on this thread unless the socket's scheduling says no (then on the pool's own socket)", async () => {
    let inline = true;
    const rtnl = Rtnl.open(a.ns, { shortRequestsInline: () => inline });
    const fds = () => readdirSync("/proc/self/fd").length;
    try {
      a.rtnl.linkAdd({ kind: "veth", name: "v2", peer: { name: "p2", netns: b.ns } });
      const index = show("v2", a.name).ifindex;
      const before = fds();
      expect((await rtnl.linkGetAsync("v2"))?.index).toBe(index);
      expect(await rtnl.linkGetAsync("nope0")).toBeNull();
      await rtnl.batch().linkSet(index, { mtu: 1400 }).runAsync();
      expect(show("v2", a.name).mtu).toBe(1400);
      expect(fds()).toBe(before); // inline: no second socket was opened for the pool
      inline = false;
      expect((await rtnl.linkGetAsync("v2"))?.index).toBe(index);
      expect(await rtnl.linkGetAsync("nope0")).toBeNull();
      await rtnl.batch().linkSet(index, { mtu: 1300 }).runAsync();
      expect(show("v2", a.name).mtu).toBe(1300);
      expect(fds()).toBe(before + 1); // the pool's socket in the same netns
    } finally {
      rtnl.close();
    }
  });

  it("creates a veth whose peer is born in another netns", () => {
    a.rtnl.linkAdd({
      kind: "veth",
      name: "h0",
      mtu: 1400,
      mac: "02:00:00:00:0a:01",
      txqlen: 500,
      up: true,
      peer: { name: "eth0", netns: b.ns, mtu: 1400, mac: "02:00:00:00:0b:01" },
    });
    const host = show("h0", a.name);
    expect(host).toMatchObject({ mtu: 1400, address: "02:00:00:00:0a:01", txqlen: 500, linkinfo: { info_kind: "veth" } });
    expect(host.flags).toContain("UP");
    const peer = show("eth0", b.name);
    expect(peer).toMatchObject({ mtu: 1400, address: "02:00:00:00:0b:01", linkinfo: { info_kind: "veth" } });
    expect(peer.flags).not.toContain("UP");
    // Our decode agrees with iproute2, including the cross-netns parent link.
    const link = a.rtnl.linkGet("h0");
    expect(link).toMatchObject({ name: "h0", kind: "veth", mtu: 1400, mac: "02:00:00:00:0a:01", txqlen: 500, up: true });
    expect(link?.parentIndex).toBe(peer.ifindex);
    expect(link?.linkNetnsId).toBeGreaterThanOrEqual(0);
  });

  it("creates a bridge with STP off and snooping as asked, and enslaves a veth at creation", () => {
    a.rtnl.linkAdd({ kind: "bridge", name: "br0", mcastSnooping: false, mtu: 1450, up: true });
    a.rtnl.linkAdd({ kind: "veth", name: "p0", peer: { name: "p0b" }, master: "br0", up: true });
    const br = show("br0", a.name);
    expect(br.linkinfo.info_data).toMatchObject({ stp_state: 0, mcast_snooping: 0 });
    expect(show("p0", a.name).master).toBe("br0");
    const link = a.rtnl.linkGet("br0");
    expect(link?.bridge).toMatchObject({ vlanFiltering: false, mcastSnooping: false, stp: false });
    expect(a.rtnl.linkGet("p0")).toMatchObject({ masterIndex: br.ifindex, slaveKind: "bridge" });
  });

  it("creates IPv4 and IPv6 VXLAN devices with every option read back", () => {
    a.rtnl.linkAdd({ kind: "veth", name: "u0", peer: { name: "u0b" } });
    a.rtnl.linkAdd({
      kind: "vxlan",
      name: "vx4",
      vni: 4096,
      port: 8472,
      local: "192.0.2.1",
      underlay: "u0",
      learning: false,
      ttl: 64,
      udpCsum: false,
      gbp: true,
    });
    const v4 = show("vx4", a.name).linkinfo.info_data;
    expect(v4).toMatchObject({
      id: 4096,
      port: 8472,
      local: "192.0.2.1",
      link: "u0",
      learning: false,
      ttl: 64,
      udp_csum: false,
      gbp: true,
    });
    expect(a.rtnl.linkGet("vx4")?.vxlan).toMatchObject({
      vni: 4096,
      port: 8472,
      local: "192.0.2.1",
      learning: false,
      ttl: 64,
      gbp: true,
    });
    a.rtnl.linkAdd({
      kind: "vxlan",
      name: "vx6",
      vni: 7,
      local: "fd00::1",
      udp6ZeroCsumTx: true,
      udp6ZeroCsumRx: true,
      learning: true,
    });
    const v6 = show("vx6", a.name).linkinfo.info_data;
    expect(v6).toMatchObject({
      id: 7,
      port: 4789,
      local6: "fd00::1",
      learning: true,
      udp_zero_csum6_tx: true,
      udp_zero_csum6_rx: true,
    });
    expect(a.rtnl.linkGet("vx6")?.vxlan).toMatchObject({ vni: 7, port: 4789, local: "fd00::1", udp6ZeroCsumTx: true });
  });

  it.each(["bridge", "private", "vepa", "passthru"] as const)("creates a macvlan in %s mode", (mode) => {
    a.rtnl.linkAdd({ kind: "veth", name: "m0", peer: { name: "m0b" } });
    a.rtnl.linkAdd({ kind: "macvlan", name: "mv0", parent: "m0", mode });
    expect(show("mv0", a.name).linkinfo.info_data.mode).toBe(mode);
    expect(a.rtnl.linkGet("mv0")).toMatchObject({ kind: "macvlan", macvlan: { mode }, parentIndex: show("m0", a.name).ifindex });
  });

  it("creates a link directly in another namespace", () => {
    a.rtnl.linkAdd({ kind: "bridge", name: "brx", netns: b.ns });
    expect(ipJson(["link", "show"], a.name).map((l) => l.ifname)).not.toContain("brx");
    expect(show("brx", b.name).linkinfo.info_kind).toBe("bridge");
  });
});

describe("errors", () => {
  it("a duplicate name is EEXIST with the operation in the message", () => {
    a.rtnl.linkAdd({ kind: "bridge", name: "dup" });
    const e = thrown(() => a.rtnl.linkAdd({ kind: "bridge", name: "dup" }));
    expect(e).toMatchObject({ code: "EEXIST", errno: 17, op: "link add dup" });
    expect(e.message).toBe("link add dup: File exists (EEXIST)");
  });

  it("a VNI of 1<<24 carries the kernel's extended-ack text", () => {
    const e = thrown(() => a.rtnl.linkAdd({ kind: "vxlan", name: "vx1", vni: 1 << 24 }));
    expect(e).toMatchObject({ code: "ERANGE", kernelMessage: "VXLAN ID must be lower than 16777216" });
    expect(e.message).toBe("link add vx1: VXLAN ID must be lower than 16777216 (ERANGE)");
  });

  it("deleting a missing link is ENODEV", () => {
    expect(thrown(() => a.rtnl.linkDel("nothere"))).toMatchObject({ code: "ENODEV", op: "link del nothere" });
  });

  it("a missing master names the device", () => {
    const e = thrown(() => a.rtnl.linkAdd({ kind: "veth", name: "v9", peer: { name: "v9b" }, master: "nobr" }));
    expect(e.message).toBe('link add v9: no such device "nobr" (ENODEV)');
  });

  it("bad input is EINVAL before anything reaches the kernel", () => {
    expect(thrown(() => a.rtnl.linkAdd({ kind: "bridge", name: "much-too-long-name" })).message).toMatch(
      /^link add much-too-long-name: invalid interface name .* \(EINVAL\)$/,
    );
    expect(thrown(() => a.rtnl.linkAdd({ kind: "bridge", name: "okname", mac: "zz" })).code).toBe("EINVAL");
    expect(thrown(() => a.rtnl.linkAdd({ kind: "bridge", name: "okname", mtu: -1 })).code).toBe("EINVAL");
    expect(ipJson(["link", "show"], a.name).map((l) => l.ifname)).toEqual(["lo"]);
  });

  it("an unknown netns path is a NetnsError naming the path", () => {
    expect(() => Rtnl.open(`/run/netns/${prefix}-missing`)).toThrow(NetnsError);
    expect(() => Rtnl.open(`/run/netns/${prefix}-missing`)).toThrow(
      `network namespace /run/netns/${prefix}-missing does not exist`,
    );
    expect(() => Rtnl.open("/proc/self/status")).toThrow("is not a network namespace");
  });
});

describe("linkSet / linkGet / linkList / linkDel", () => {
  it("changes up, mtu, mac, txqlen, promisc, allmulti and the name", () => {
    a.rtnl.linkAdd({ kind: "veth", name: "s0", peer: { name: "s0b" } });
    a.rtnl.linkSet("s0", { up: true, mtu: 1300, mac: "02:11:22:33:44:55", txqlen: 100, promisc: true, allmulti: true });
    let l = show("s0", a.name);
    expect(l).toMatchObject({ mtu: 1300, address: "02:11:22:33:44:55", txqlen: 100, promiscuity: 1 });
    expect(l.flags).toEqual(expect.arrayContaining(["UP", "PROMISC", "ALLMULTI"]));
    expect(a.rtnl.linkGet("s0")).toMatchObject({ up: true, promisc: true, allmulti: true, mtu: 1300 });
    a.rtnl.linkSet("s0", { up: false, promisc: false, name: "s1" });
    l = show("s1", a.name);
    expect(l.flags).not.toContain("UP");
    expect(l.promiscuity).toBe(0);
    expect(a.rtnl.linkGet("s0")).toBeNull();
  });

  it("sets and clears a master", () => {
    a.rtnl.linkAdd({ kind: "bridge", name: "br1" });
    a.rtnl.linkAdd({ kind: "veth", name: "q0", peer: { name: "q0b" } });
    a.rtnl.linkSet("q0", { master: "br1" });
    expect(show("q0", a.name).master).toBe("br1");
    a.rtnl.linkSet("q0", { master: null });
    expect(show("q0", a.name).master).toBeUndefined();
  });

  it("moves a link to another namespace (sync and async)", async () => {
    a.rtnl.linkAdd({ kind: "veth", name: "mv1", peer: { name: "mv1b" } });
    a.rtnl.linkSet("mv1", { netns: b.ns });
    expect(show("mv1", b.name).ifname).toBe("mv1");
    await a.rtnl.linkSetAsync("mv1b", { netns: b.ns, name: "moved" });
    expect(show("moved", b.name).ifname).toBe("moved");
    expect(ipJson(["link", "show"], a.name).map((l) => l.ifname)).toEqual(["lo"]);
  });

  it("lists what ip lists, and deletes sync and async (serialised on one socket)", async () => {
    for (let i = 0; i < 5; i++) a.rtnl.linkAdd({ kind: "veth", name: `l${i}`, peer: { name: `l${i}b` } });
    const ours = a.rtnl
      .linkList()
      .map((l) => [l.index, l.name, l.mtu, l.mac])
      .sort();
    const theirs = ipJson(["link", "show"], a.name)
      .map((l) => [l.ifindex, l.ifname, l.mtu, l.address])
      .sort();
    expect(ours).toEqual(theirs);
    const viaPool = (await a.rtnl.linkListAsync()).map((l) => [l.index, l.name, l.mtu, l.mac]).sort();
    expect(viaPool).toEqual(theirs);
    a.rtnl.linkDel("l0");
    const index = a.rtnl.linkIndex("l1");
    await Promise.all([a.rtnl.linkDelAsync(index), a.rtnl.linkDelAsync("l2"), a.rtnl.linkDelAsync("l3")]);
    // A sync request while async ones ran uses its own socket and is unaffected.
    expect(a.rtnl.linkGet("l4")?.name).toBe("l4");
    await expect(a.rtnl.linkDelAsync("l3")).rejects.toMatchObject({ code: "ENODEV" });
    // Deleting one end of a veth deletes its peer.
    const left = ipJson(["link", "show"], a.name).map((l) => l.ifname);
    expect(left.sort()).toEqual(["l4", "l4b", "lo"]);
  });

  it("linkGet returns null for a missing link and works by index", () => {
    expect(a.rtnl.linkGet("nope")).toBeNull();
    expect(a.rtnl.linkGet(999)).toBeNull();
    expect(a.rtnl.linkGet(1)?.name).toBe("lo");
  });
});

describe("bridge ports", () => {
  it("sets hairpin, learning and isolated through AF_BRIDGE IFLA_PROTINFO", () => {
    a.rtnl.linkAdd({ kind: "bridge", name: "br2" });
    a.rtnl.linkAdd({ kind: "veth", name: "bp0", peer: { name: "bp0b" }, master: "br2" });
    a.rtnl.bridgePortSet("bp0", { hairpin: true, learning: false, isolated: true });
    const info = show("bp0", a.name).linkinfo.info_slave_data;
    expect(info).toMatchObject({ hairpin: true, learning: false, isolated: true });
    expect(a.rtnl.linkGet("bp0")?.bridgePort).toMatchObject({ hairpin: true, learning: false, isolated: true });
    a.rtnl.bridgePortSet("bp0", { hairpin: false });
    expect(show("bp0", a.name).linkinfo.info_slave_data.hairpin).toBe(false);
  });

  it("a port setting on a link that is not a bridge port fails clearly", () => {
    a.rtnl.linkAdd({ kind: "veth", name: "np0", peer: { name: "np0b" } });
    const e = thrown(() => a.rtnl.bridgePortSet("np0", { hairpin: true }));
    expect(e.op).toBe("bridge link set np0");
    expect(e.code).toMatch(/^E/);
  });

  it("adds and removes port VLANs (or says the kernel lacks VLAN filtering)", () => {
    a.rtnl.linkAdd({ kind: "bridge", name: "br3" });
    a.rtnl.linkAdd({ kind: "veth", name: "vp0", peer: { name: "vp0b" }, master: "br3" });
    try {
      a.rtnl.bridgeVlanAdd("vp0", 10, { pvid: true, untagged: true });
    } catch (e) {
      // A kernel built without CONFIG_BRIDGE_VLAN_FILTERING: the error must say so.
      expect((e as NetlinkError).message).toBe(
        "bridge vlan add vid 10 dev vp0: this kernel has no bridge VLAN support (CONFIG_BRIDGE_VLAN_FILTERING) (EOPNOTSUPP)",
      );
      return;
    }
    const vlans = a.rtnl.bridgeVlanList("vp0");
    expect(vlans).toContainEqual({ ifindex: a.rtnl.linkIndex("vp0"), vid: 10, pvid: true, untagged: true });
    a.rtnl.bridgeVlanDel("vp0", 10);
    expect(a.rtnl.bridgeVlanList("vp0").some((v) => v.vid === 10)).toBe(false);
  });
});

describe("sockets", () => {
  it("a socket opened for a namespace stays there after the open returns", () => {
    const r = Rtnl.open(a.name);
    try {
      r.linkAdd({ kind: "bridge", name: "stay" });
      expect(show("stay", a.name).ifname).toBe("stay");
      expect(ipJson(["link", "show"], b.name).map((l) => l.ifname)).toEqual(["lo"]);
    } finally {
      r.close();
    }
  });

  it("refuses requests after close with a clear error", async () => {
    const r = Rtnl.open(a.ns);
    r.close();
    expect(() => r.linkList()).toThrow("link list: netlink socket is closed (EBADF)");
    await expect(r.linkDelAsync("x")).rejects.toMatchObject({ code: "EBADF" });
  });
});
