import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ipJson, testPrefix } from "../../testing/kernel.ts";
import { type ScratchNetns, scratchNetns } from "../../testing/scratch-netns.ts";
import { NetlinkError } from "./error.ts";
import { Rtnl } from "./socket.ts";

let a: ScratchNetns;

beforeEach(() => {
  a = scratchNetns(`${testPrefix()}-r`);
  a.rtnl.linkSet("lo", { up: true });
  a.rtnl.linkAdd({ kind: "veth", name: "e0", peer: { name: "e0b" }, up: true });
  a.rtnl.linkSet("e0b", { up: true }); // carrier on e0, so routes via it are usable
});

afterEach(() => a?.close());

function addrs(dev: string) {
  return ipJson(["addr", "show", "dev", dev], a.name)[0].addr_info as {
    family: string;
    local: string;
    prefixlen: number;
    broadcast?: string;
    scope: string;
    noprefixroute?: boolean;
    nodad?: boolean;
  }[];
}

function routes(args: string[], family: 4 | 6 = 4) {
  return ipJson([`-${family}`, "route", "show", ...args], a.name);
}

describe("addresses", () => {
  it("adds IPv4 with broadcast and IPv6 with nodad/noprefixroute, lists and deletes them", async () => {
    a.rtnl.addrAdd("e0", { cidr: "10.20.0.2/24", broadcast: "auto" });
    a.rtnl.addrAdd("e0", { cidr: "fd20::2/64", nodad: true, noprefixroute: true });
    a.rtnl.addrAdd("e0", { cidr: "10.21.0.1/32", scope: "link" });
    const got = addrs("e0");
    expect(got).toContainEqual(
      expect.objectContaining({ family: "inet", local: "10.20.0.2", prefixlen: 24, broadcast: "10.20.0.255" }),
    );
    expect(got).toContainEqual(expect.objectContaining({ family: "inet", local: "10.21.0.1", scope: "link" }));
    const v6 = got.find((x) => x.local === "fd20::2");
    expect(v6).toMatchObject({ prefixlen: 64, noprefixroute: true, nodad: true });
    // noprefixroute: no fd20::/64 route was installed; the IPv4 one was.
    expect(routes([], 6).map((r) => r.dst)).not.toContain("fd20::/64");
    expect(routes([]).map((r) => r.dst)).toContain("10.20.0.0/24");

    const index = a.rtnl.linkIndex("e0");
    const ours = a.rtnl.addrList({ ifindex: index });
    expect(ours.map((x) => x.cidr).sort()).toEqual(got.map((x) => `${x.local}/${x.prefixlen}`).sort());
    expect(ours.find((x) => x.address === "10.20.0.2")).toMatchObject({ family: 4, broadcast: "10.20.0.255", scope: "universe" });
    expect(ours.find((x) => x.address === "fd20::2")).toMatchObject({ family: 6, tentative: false });
    expect(a.rtnl.addrList({ ifindex: index, family: 6 }).every((x) => x.family === 6)).toBe(true);
    // addrListAsync gives the same, on this thread and on the thread pool.
    const cidrs = (l: { cidr: string }[]) => l.map((x) => x.cidr).sort();
    expect(cidrs(await a.rtnl.addrListAsync({ ifindex: index }))).toEqual(cidrs(ours));
    const onPool = Rtnl.open(a.ns, { shortRequestsInline: () => false });
    try {
      expect(cidrs(await onPool.addrListAsync({ ifindex: index }))).toEqual(cidrs(ours));
      expect((await onPool.addrListAsync({ ifindex: index, family: 4 })).every((x) => x.family === 4)).toBe(true);
    } finally {
      onPool.close();
    }

    a.rtnl.addrDel("e0", "10.20.0.2/24");
    a.rtnl.addrDel(index, "fd20::2/64");
    expect(addrs("e0").map((x) => x.local)).not.toContain("10.20.0.2");
    expect(addrs("e0").map((x) => x.local)).not.toContain("fd20::2");
  });

  it("EEXIST on a duplicate add, replace is idempotent, EADDRNOTAVAIL on deleting a missing one", () => {
    a.rtnl.addrAdd("e0", "10.22.0.1/24");
    expect(() => a.rtnl.addrAdd("e0", "10.22.0.1/24")).toThrow(
      "addr add 10.22.0.1/24 dev e0: ipv4: Address already assigned (EEXIST)",
    );
    a.rtnl.addrReplace("e0", "10.22.0.1/24");
    expect(addrs("e0").filter((x) => x.local === "10.22.0.1")).toHaveLength(1);
    try {
      a.rtnl.addrDel("e0", "10.99.0.1/24");
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(NetlinkError);
      expect((e as NetlinkError).code).toBe("EADDRNOTAVAIL");
    }
    expect(() => a.rtnl.addrAdd("e0", "10.0.0.300/24")).toThrow(/"10.0.0.300" is not an IP address \(EINVAL\)/);
    expect(() => a.rtnl.addrAdd("nodev", "10.0.0.1/24")).toThrow('no such device "nodev" (ENODEV)');
  });
});

describe("routes", () => {
  beforeEach(() => {
    a.rtnl.addrAdd("e0", "10.30.0.2/24");
    a.rtnl.addrAdd("e0", { cidr: "fd30::2/64", nodad: true });
  });

  it("adds a route via a gateway with metric, mtu and advmss, replaces and deletes it", () => {
    a.rtnl.routeAdd({ dst: "10.40.0.0/16", gateway: "10.30.0.1", priority: 20, mtu: 1400, advmss: 1360, protocol: "static" });
    let [r] = routes(["10.40.0.0/16"]);
    expect(r).toMatchObject({ dst: "10.40.0.0/16", gateway: "10.30.0.1", dev: "e0", metric: 20, protocol: "static" });
    expect(r.metrics).toEqual([{ mtu: 1400, advmss: 1360 }]);
    const ours = a.rtnl.routeList({ family: 4 }).find((x) => x.dst === "10.40.0.0/16");
    expect(ours).toMatchObject({ gateway: "10.30.0.1", priority: 20, mtu: 1400, advmss: 1360, protocol: "static", table: 254 });
    expect(() => a.rtnl.routeAdd({ dst: "10.40.0.0/16", gateway: "10.30.0.1", priority: 20 })).toThrow(/\(EEXIST\)$/);
    a.rtnl.routeReplace({ dst: "10.40.0.0/16", gateway: "10.30.0.3", priority: 20 });
    [r] = routes(["10.40.0.0/16"]);
    expect(r.gateway).toBe("10.30.0.3");
    a.rtnl.routeDel({ dst: "10.40.0.0/16", priority: 20 });
    expect(routes(["10.40.0.0/16"])).toEqual([]);
    expect(() => a.rtnl.routeDel({ dst: "10.40.0.0/16" })).toThrow(/route del 10.40.0.0\/16: .*\(ESRCH\)$/);
  });

  it("adds IPv4 and IPv6 default routes and a device route with scope link", () => {
    a.rtnl.routeAdd({ dst: "default", gateway: "10.30.0.1" });
    a.rtnl.routeAdd({ dst: "default", gateway: "fd30::1", dev: "e0" });
    a.rtnl.routeAdd({ dst: "10.50.0.0/24", dev: "e0" });
    expect(routes(["default"])).toEqual([expect.objectContaining({ dst: "default", gateway: "10.30.0.1", dev: "e0" })]);
    expect(routes(["default"], 6)).toEqual([expect.objectContaining({ dst: "default", gateway: "fd30::1", dev: "e0" })]);
    expect(routes(["10.50.0.0/24"])[0]).toMatchObject({ dev: "e0", scope: "link" });
    const ours = a.rtnl.routeList({ ifindex: a.rtnl.linkIndex("e0") });
    expect(
      ours
        .filter((r) => r.dst === "default")
        .map((r) => r.family)
        .sort(),
    ).toEqual([4, 6]);
  });

  it("onlink gateway outside every subnet, custom table, blackhole type and host scope", () => {
    expect(() => a.rtnl.routeAdd({ dst: "10.60.0.0/24", gateway: "192.0.2.1", dev: "e0" })).toThrow(NetlinkError);
    a.rtnl.routeAdd({ dst: "10.60.0.0/24", gateway: "192.0.2.1", dev: "e0", onlink: true });
    expect(routes(["10.60.0.0/24"])[0]).toMatchObject({ gateway: "192.0.2.1", flags: ["onlink"] });
    expect(a.rtnl.routeList().find((r) => r.dst === "10.60.0.0/24")?.onlink).toBe(true);

    a.rtnl.routeAdd({ dst: "10.70.0.0/24", dev: "e0", table: 1000 });
    expect(routes(["table", "1000"])).toEqual([expect.objectContaining({ dst: "10.70.0.0/24", dev: "e0" })]);
    expect(a.rtnl.routeList().some((r) => r.dst === "10.70.0.0/24")).toBe(false);
    expect(a.rtnl.routeList({ table: 1000 })).toEqual([expect.objectContaining({ dst: "10.70.0.0/24", table: 1000 })]);
    a.rtnl.routeDel({ dst: "10.70.0.0/24", table: 1000 });
    expect(routes(["table", "1000"])).toEqual([]);

    a.rtnl.routeAdd({ dst: "10.80.0.0/24", type: "blackhole" });
    expect(routes(["10.80.0.0/24"])[0]).toMatchObject({ type: "blackhole" });
    expect(a.rtnl.routeList().find((r) => r.dst === "10.80.0.0/24")?.type).toBe("blackhole");

    a.rtnl.routeAdd({ dst: "10.90.0.1/32", dev: "e0", scope: "host" });
    expect(routes(["10.90.0.1"])[0]).toMatchObject({ scope: "host" });
  });

  it("rejects mixed families and bad prefixes with EINVAL", () => {
    expect(() => a.rtnl.routeAdd({ dst: "10.0.0.0/8", gateway: "fd30::1" })).toThrow(/not the same family.*\(EINVAL\)$/);
    expect(() => a.rtnl.routeAdd({ dst: "10.0.0.0/40" })).toThrow(/prefix length must be 0..32 \(EINVAL\)$/);
  });
});

describe("batches (several requests in one message)", () => {
  it("applies every step in order in one exchange, on the thread pool too", async () => {
    const index = a.rtnl.linkIndex("e0");
    a.rtnl.linkSet("e0", { up: false });
    await a.rtnl
      .batch()
      .addrAdd(index, { cidr: "10.30.0.2/24", broadcast: "auto" })
      .linkSet(index, { up: true })
      .routeAdd({ dst: "10.31.0.0/16", gateway: "10.30.0.1", dev: index, family: 4 })
      .runAsync();
    expect(addrs("e0").map((x) => `${x.local}/${x.prefixlen}`)).toContain("10.30.0.2/24");
    expect(ipJson(["link", "show", "dev", "e0"], a.name)[0].flags).toContain("UP");
    // the route needed the address before it: order held
    expect(routes(["10.31.0.0/16"])).toEqual([expect.objectContaining({ gateway: "10.30.0.1", dev: "e0" })]);

    a.rtnl.batch().addrAdd(index, { cidr: "10.32.0.2/24" }).run();
    expect(addrs("e0").map((x) => x.local)).toContain("10.32.0.2");
  });

  it("reports the first failure that is not ignored, naming its step; the kernel still ran the others", async () => {
    const index = a.rtnl.linkIndex("e0");
    a.rtnl.addrAdd(index, { cidr: "10.40.0.2/24" });
    a.rtnl.routeAdd({ dst: "10.41.0.0/16", gateway: "10.40.0.1", dev: index });
    const err = await a.rtnl
      .batch()
      .routeAdd({ dst: "10.41.0.0/16", gateway: "10.40.0.1", dev: index, family: 4 }, { ignore: ["EEXIST"] })
      .addrAdd(index, { cidr: "10.40.0.2/24" }) // EEXIST, not ignored: the failure
      .routeAdd({ dst: "10.42.0.0/16", gateway: "10.99.0.1", dev: index, family: 4 }) // unreachable: a later failure
      .addrAdd(index, { cidr: "10.43.0.2/24" })
      .runAsync()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(NetlinkError);
    expect((err as NetlinkError).code).toBe("EEXIST");
    expect((err as NetlinkError).message).toContain("addr add 10.40.0.2/24");
    expect(addrs("e0").map((x) => x.local)).toContain("10.43.0.2");
    // the socket is still in step: a plain request afterwards gets its own answer
    expect(a.rtnl.linkGet("e0")?.index).toBe(index);
    expect(() => a.rtnl.batch().addrAdd(index, { cidr: "10.40.0.2/24" }).run()).toThrow(/EEXIST|exists/);
  });
});
