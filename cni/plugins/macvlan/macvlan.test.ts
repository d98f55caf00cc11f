// berth-macvlan against the real kernel. Most cases run in-process (handleInvocation) with an
// explicit master: a veth of this test on the host, never eth0. The default-master case
// runs the plugin executable inside a "host" netns of the test, whose default route goes out a
// veth, so the plugin must pick that veth and the container reaches the veth's far end.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { invokePlugin, type Outcome, type Reply, ulaPrefix } from "../../../testing/cni-plugin.ts";
import { delLink, ipJson, ping, sh } from "../../../testing/kernel.ts";
import { leaseRows } from "../../../testing/leases.ts";
import { Sandbox } from "../../../testing/sandbox.ts";
import { closeLeaseStores } from "../../ipam/host-local/host-local.ts";
import type { Result } from "../../protocol/types.ts";
import { macvlanPlugin } from "./macvlan.ts";

interface Container {
  id: string;
  ns: string;
  path: string;
}

let sb: Sandbox;
let v4: { subnet: string; base: string };
let v6Prefix: string;
let network: string;
let master: string;
let count = 0;

beforeEach(() => {
  sb = new Sandbox();
  v4 = sb.allocateSubnet(24);
  v6Prefix = ulaPrefix(3);
  network = `${sb.prefix}-mv`;
  // The master: one end of a veth pair of this test (this kernel has no dummy driver).
  master = `${sb.prefix}m`;
  sh("ip", ["link", "add", master, "type", "veth", "peer", "name", `${sb.prefix}n`]);
  sh("ip", ["link", "set", master, "up"]);
  sh("ip", ["link", "set", `${sb.prefix}n`, "up"]); // carrier: macvlans of a master without one stay down
});

afterEach(() => {
  closeLeaseStores();
  sb.cleanup();
  delLink(master);
});

function conf(extra: Record<string, unknown> = {}, ipam: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    cniVersion: "1.1.0",
    name: network,
    type: "berth-macvlan",
    master,
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
  const { name, path } = sb.createNetns("m");
  return { id: `${sb.prefix}-ctr${count++}`, ns: name, path };
}

async function cni(command: string, config: Record<string, unknown>, c: { id: string; path?: string }): Promise<Outcome> {
  return invokePlugin(macvlanPlugin, command, config, c);
}

async function ok(command: string, config: Record<string, unknown>, c: { id: string; path?: string }): Promise<Reply> {
  const r = await cni(command, config, c);
  expect(r.exitCode, `${command}: ${JSON.stringify(r.json)}`).toBe(0);
  return r.json;
}

function leases(): string[] {
  return leaseRows(sb.dataDir, network).map((r) => r.ip);
}

interface LinkJson {
  ifname: string;
  address: string;
  mtu: number;
  link_index?: number;
  link_netnsid?: number;
  linkinfo?: { info_kind?: string; info_data?: { mode?: string } };
  addr_info: { family: string; local: string; prefixlen: number; scope: string; tentative?: boolean }[];
}

function podLinks(ns: string): string[] {
  return ipJson<{ ifname: string }>(["link", "show"], ns).map((l) => l.ifname);
}

const ipOf = (cidr: string) => cidr.split("/")[0]!;

describe("berth-macvlan", () => {
  it("ADD creates a macvlan of the master in the container: mode, MAC, MTU and dual-stack addresses as the result says", async () => {
    const c = container();
    const mac = "02:42:ac:11:00:07";
    const res = await ok("ADD", conf({ mode: "bridge", mtu: 1400, mac }), c);
    const pod = ipJson<LinkJson>(["addr", "show", "dev", "eth0"], c.ns)[0]!;
    expect(pod.linkinfo?.info_kind).toBe("macvlan");
    expect(pod.linkinfo?.info_data?.mode).toBe("bridge");
    expect(pod.address).toBe(mac);
    expect(res.interfaces).toEqual([{ name: "eth0", mac, mtu: 1400, sandbox: c.path }]);
    expect(pod.mtu).toBe(1400);
    // Its lower device is the master, seen from the container as an ifindex in another netns.
    const masterIndex = ipJson<{ ifindex: number }>(["link", "show", "dev", master])[0]!.ifindex;
    expect(pod.link_index).toBe(masterIndex);
    const global = pod.addr_info.filter((a) => a.scope === "global");
    expect(global.map((a) => `${a.local}/${a.prefixlen}`).sort()).toEqual(res.ips!.map((i) => i.address).sort());
    expect(global.some((a) => a.tentative)).toBe(false);
    expect(leases()).toEqual(res.ips!.map((i) => ipOf(i.address)).sort());
  });

  it("bridge mode: two containers on one master reach each other (v4 and v6); private mode isolates them", async () => {
    const a = container();
    const b = container();
    await ok("ADD", conf(), a);
    const rb = await ok("ADD", conf(), b);
    for (const ip of rb.ips!) expect(ping(a.ns, ipOf(ip.address)), `bridge mode a → ${ip.address}`).toBe(true);

    const p = container();
    const q = container();
    await ok("ADD", conf({ mode: "private" }), p);
    const rq = await ok("ADD", conf({ mode: "private" }), q);
    const linkQ = ipJson<LinkJson>(["link", "show", "dev", "eth0"], q.ns)[0]!;
    expect(linkQ.linkinfo?.info_data?.mode).toBe("private");
    expect(ping(p.ns, ipOf(rq.ips![0]!.address))).toBe(false);
  });

  it("refuses a missing master or an MTU above the master's, naming the key, with nothing left behind", async () => {
    const c = container();
    const missing = await cni("ADD", conf({ master: `${sb.prefix}zz` }), c);
    expect(missing.exitCode).toBe(1);
    expect(missing.json.code).toBe(7);
    expect(missing.json.msg).toContain('"master"');
    const tooBig = await cni("ADD", conf({ mtu: 9000 }), c);
    expect(tooBig.json.code).toBe(7);
    expect(tooBig.json.msg).toContain('"mtu"');
    const badMode = await cni("ADD", conf({ mode: "sideways" }), c);
    expect(badMode.json.code).toBe(7);
    expect(badMode.json.msg).toContain("mode");
    expect(podLinks(c.ns)).toEqual(["lo"]);
    expect(leases()).toEqual([]);
  });

  it("a failed ADD half-way (route via an unreachable gateway) removes the link and the lease", async () => {
    const c = container();
    const r = await cni("ADD", conf({}, { routes: [{ dst: "198.51.100.0/24", gw: "203.0.113.9" }] }), c);
    expect(r.exitCode).toBe(1);
    expect(r.json.code).toBe(999);
    expect(podLinks(c.ns)).toEqual(["lo"]);
    expect(leases()).toEqual([]);
  });

  it("DEL is idempotent (twice, after the netns is gone, without CNI_NETNS); CHECK passes, then fails when broken", async () => {
    const config = conf();
    const a = container();
    const ra = await ok("ADD", config, a);
    await ok("CHECK", { ...config, prevResult: ra }, a);
    sh("ip", ["-n", a.ns, "addr", "del", ra.ips![0]!.address, "dev", "eth0"]);
    const broken = await cni("CHECK", { ...config, prevResult: ra }, a);
    expect(broken.exitCode).toBe(1);
    expect(broken.json.msg).toContain(`address ${ra.ips![0]!.address} is missing`);
    const wrongMode = await cni("CHECK", { ...conf({ mode: "vepa" }), prevResult: ra }, a);
    expect(wrongMode.exitCode).toBe(1);
    await ok("DEL", config, a);
    await ok("DEL", config, a);
    expect(podLinks(a.ns)).toEqual(["lo"]);
    const gone = await cni("CHECK", { ...config, prevResult: ra }, a);
    expect(gone.exitCode).toBe(1);
    expect(gone.json.msg).toMatch(/no address is leased|eth0 is missing/);

    const b = container();
    await ok("ADD", config, b);
    sb.deleteNetns(b.ns);
    await ok("DEL", config, b);
    await ok("DEL", config, { id: b.id });
    expect(leases()).toEqual([]);
  });

  it("GC releases the leases of attachments not in the valid list", async () => {
    const config = conf();
    const keep = container();
    const rk = await ok("ADD", config, keep);
    await ok("ADD", config, container());
    expect(leases()).toHaveLength(4);
    await ok("GC", { ...config, "cni.dev/valid-attachments": [{ containerID: keep.id, ifname: "eth0" }] }, { id: "" });
    expect(leases()).toEqual(rk.ips!.map((i) => ipOf(i.address)).sort());
    await ok("STATUS", config, { id: "" });
  });
});

const EXECUTABLE = resolve(import.meta.dirname, "../../../build/cni/berth-macvlan");

describe.skipIf(!existsSync(EXECUTABLE))("berth-macvlan executable in a host netns", () => {
  it("without master, takes the interface of the host netns' default route and reaches the network behind it", () => {
    // "host" netns: veth h0 ↔ peer in an "outside" netns, default route via the outside end.
    const host = sb.createNetns("host");
    const outside = sb.createNetns("out");
    sh("ip", ["-n", host.name, "link", "add", "h0", "type", "veth", "peer", "name", "o0", "netns", outside.name]);
    sh("ip", ["-n", host.name, "link", "set", "h0", "up"]);
    sh("ip", ["-n", outside.name, "link", "set", "o0", "up"]);
    sh("ip", ["-n", outside.name, "addr", "add", `${v4.base}.254/24`, "dev", "o0"]);
    sh("ip", ["-n", host.name, "addr", "add", `${v4.base}.253/24`, "dev", "h0"]);
    sh("ip", ["-n", host.name, "route", "add", "default", "via", `${v4.base}.254`]);
    const c = container();
    const { master: _m, ...config } = conf({}, { ranges: [[{ subnet: v4.subnet, rangeStart: `${v4.base}.10` }]] });
    const out = spawnSync("ip", ["netns", "exec", host.name, EXECUTABLE], {
      input: JSON.stringify(config),
      encoding: "utf8",
      env: {
        PATH: process.env.PATH,
        BERTH_CNI_SOCKET: "off", // the cold path: an agent, if any, runs in the real host netns
        CNI_COMMAND: "ADD",
        CNI_CONTAINERID: c.id,
        CNI_NETNS: c.path,
        CNI_IFNAME: "eth0",
        CNI_PATH: "/usr/lib/cni",
      },
    });
    expect(out.status, `${out.stdout} ${out.stderr}`).toBe(0);
    const res = JSON.parse(out.stdout) as Result;
    expect(res.ips![0]!.address).toBe(`${v4.base}.10/24`);
    const pod = ipJson<LinkJson>(["link", "show", "dev", "eth0"], c.ns)[0]!;
    const h0 = ipJson<{ ifindex: number }>(["link", "show", "dev", "h0"], host.name)[0]!;
    expect(pod.link_index).toBe(h0.ifindex);
    expect(ping(c.ns, `${v4.base}.254`)).toBe(true);
  });
});
