import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { bridgeJson, ipJson, testPrefix } from "../../testing/kernel.ts";
import { type ScratchNetns, scratchNetns } from "../../testing/scratch-netns.ts";

let a: ScratchNetns;

beforeEach(() => {
  a = scratchNetns(`${testPrefix()}-n`);
  a.rtnl.linkAdd({ kind: "veth", name: "u0", peer: { name: "u0b" }, up: true });
  a.rtnl.addrAdd("u0", "192.0.2.1/24");
  a.rtnl.linkAdd({ kind: "vxlan", name: "vx0", vni: 100, local: "192.0.2.1", underlay: "u0", learning: false, up: true });
});

afterEach(() => a?.close());

function neighs(dev: string, family: 4 | 6 = 4) {
  return ipJson([`-${family}`, "neigh", "show", "dev", dev], a.name);
}

function fdb(dev: string) {
  return bridgeJson(["fdb", "show", "dev", dev], a.name);
}

describe("neighbours", () => {
  it("adds, replaces, lists and deletes IPv4 and IPv6 entries on a VXLAN device", () => {
    a.rtnl.neighAdd({ dev: "vx0", dst: "10.244.1.0", lladdr: "02:00:00:00:01:01" });
    a.rtnl.neighAdd({ dev: "vx0", dst: "fd44:1::", lladdr: "02:00:00:00:01:02", state: "reachable" });
    expect(neighs("vx0")).toEqual([
      expect.objectContaining({ dst: "10.244.1.0", lladdr: "02:00:00:00:01:01", state: ["PERMANENT"] }),
    ]);
    expect(neighs("vx0", 6)).toEqual([expect.objectContaining({ dst: "fd44:1::", lladdr: "02:00:00:00:01:02" })]);
    expect(() => a.rtnl.neighAdd({ dev: "vx0", dst: "10.244.1.0", lladdr: "02:00:00:00:01:09" })).toThrow(/\(EEXIST\)$/);

    a.rtnl.neighReplace({ dev: "vx0", dst: "10.244.1.0", lladdr: "02:00:00:00:01:03" });
    expect(neighs("vx0")[0].lladdr).toBe("02:00:00:00:01:03");

    const index = a.rtnl.linkIndex("vx0");
    const ours = a.rtnl.neighList({ ifindex: index });
    expect(ours).toContainEqual(
      expect.objectContaining({ family: 4, dst: "10.244.1.0", lladdr: "02:00:00:00:01:03", states: ["permanent"] }),
    );
    expect(ours).toContainEqual(expect.objectContaining({ family: 6, dst: "fd44:1::", lladdr: "02:00:00:00:01:02" }));
    // The kernel also holds NOARP multicast entries (MLD's ff02::16); ours are the others.
    const v6 = a.rtnl.neighList({ ifindex: index, family: 6 }).filter((n) => !n.states.includes("noarp"));
    expect(v6.map((n) => n.dst)).toEqual(["fd44:1::"]);

    a.rtnl.neighDel({ dev: "vx0", dst: "10.244.1.0" });
    a.rtnl.neighDel({ dev: index, dst: "fd44:1::" });
    expect(neighs("vx0")).toEqual([]);
    expect(neighs("vx0", 6).filter((n) => !n.dst.startsWith("ff02:"))).toEqual([]);
    expect(() => a.rtnl.neighDel({ dev: "vx0", dst: "10.244.1.0" })).toThrow(/^neigh del 10.244.1.0 dev vx0: .*\(ENOENT\)$/);
  });

  it("rejects a bad state or MAC with EINVAL", () => {
    expect(() => a.rtnl.neighAdd({ dev: "vx0", dst: "10.0.0.1", lladdr: "nope" })).toThrow(/is not a MAC address \(EINVAL\)$/);
    // biome-ignore lint/suspicious/noExplicitAny: a caller bypassing the types
    expect(() => a.rtnl.neighAdd({ dev: "vx0", dst: "10.0.0.1", state: "weird" as any })).toThrow(/unknown neighbour state/);
  });
});

describe("FDB", () => {
  it("appends several flood destinations and a unicast entry with vni and port on a VXLAN device", () => {
    a.rtnl.fdbAppend({ dev: "vx0", mac: "00:00:00:00:00:00", dst: "192.0.2.2" });
    a.rtnl.fdbAppend({ dev: "vx0", mac: "00:00:00:00:00:00", dst: "192.0.2.3" });
    a.rtnl.fdbAdd({ dev: "vx0", mac: "02:00:00:00:02:01", dst: "192.0.2.4", vni: 200, port: 4790 });
    const theirs = fdb("vx0");
    expect(
      theirs
        .filter((e) => e.mac === "00:00:00:00:00:00")
        .map((e) => e.dst)
        .sort(),
    ).toEqual(["192.0.2.2", "192.0.2.3"]);
    expect(theirs).toContainEqual(
      expect.objectContaining({
        mac: "02:00:00:00:02:01",
        dst: "192.0.2.4",
        vni: 200,
        port: 4790,
        state: "permanent",
        flags: ["self"],
      }),
    );
    const ours = a.rtnl.fdbList({ ifindex: a.rtnl.linkIndex("vx0") });
    expect(ours).toContainEqual(
      expect.objectContaining({ mac: "02:00:00:00:02:01", dst: "192.0.2.4", vni: 200, port: 4790, self: true, permanent: true }),
    );
    expect(ours.filter((e) => e.mac === "00:00:00:00:00:00")).toHaveLength(2);

    expect(() => a.rtnl.fdbAdd({ dev: "vx0", mac: "02:00:00:00:02:01", dst: "192.0.2.9" })).toThrow(/\(EEXIST\)$/);
    a.rtnl.fdbReplace({ dev: "vx0", mac: "02:00:00:00:02:01", dst: "192.0.2.5" });
    expect(fdb("vx0").find((e) => e.mac === "02:00:00:00:02:01")?.dst).toBe("192.0.2.5");

    a.rtnl.fdbDel({ dev: "vx0", mac: "00:00:00:00:00:00", dst: "192.0.2.2" });
    expect(
      fdb("vx0")
        .filter((e) => e.mac === "00:00:00:00:00:00")
        .map((e) => e.dst),
    ).toEqual(["192.0.2.3"]);
    a.rtnl.fdbDel({ dev: "vx0", mac: "02:00:00:00:02:01" });
    expect(fdb("vx0").some((e) => e.mac === "02:00:00:00:02:01")).toBe(false);
  });

  it("adds a static entry to a bridge's table through a port (master)", () => {
    a.rtnl.linkAdd({ kind: "bridge", name: "br0", up: true });
    a.rtnl.linkAdd({ kind: "veth", name: "p0", peer: { name: "p0b" }, master: "br0", up: true });
    a.rtnl.fdbAdd({ dev: "p0", mac: "02:00:00:00:03:01", master: true });
    const e = fdb("p0").find((x) => x.mac === "02:00:00:00:03:01");
    expect(e).toMatchObject({ master: "br0", state: "static" });
    expect(a.rtnl.fdbList().find((x) => x.mac === "02:00:00:00:03:01")).toMatchObject({
      master: true,
      permanent: false,
      masterIndex: a.rtnl.linkIndex("br0"),
    });
    a.rtnl.fdbDel({ dev: "p0", mac: "02:00:00:00:03:01", master: true });
    expect(fdb("p0").some((x) => x.mac === "02:00:00:00:03:01")).toBe(false);
  });
});
