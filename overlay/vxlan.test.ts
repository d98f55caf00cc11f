// Single-host dataplane test on the real kernel: the agent's dataplane lives in a throwaway
// netns with a veth underlay; synthetic remote leases written to the store must show up as
// neighbour, FDB entry and route (read back with ip/bridge -j), follow MAC changes without
// leaving the stale FDB entry, be repaired after hand deletion, and vanish with the lease.

import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Subnet } from "../cni/address/address.ts";
import { addNetns, bridgeJson, delNetns, ipJson, sh, testPrefix } from "../testing/kernel.ts";
import { httpOverUnix, until } from "../testing/poll.ts";
import { Agent } from "./agent.ts";
import { parseAgentConfig } from "./config.ts";
import { subnetKey } from "./lease.ts";
import { LocalStore } from "./store/local.ts";
import { openVxlanDataplane } from "./vxlan.ts";

const PREFIX = "/berth/network";

describe("VXLAN dataplane in a netns", () => {
  let p: string;
  let ns: string;
  let dir: string;
  let store: LocalStore;
  let agent: Agent | undefined;

  beforeEach(() => {
    p = testPrefix();
    ns = `${p}n`;
    dir = mkdtempSync(join(tmpdir(), `berth-${p}-`));
    addNetns(ns);
    sh("ip", ["-n", ns, "link", "add", `${p}a`, "type", "veth", "peer", "name", `${p}b`]);
    sh("ip", ["-n", ns, "addr", "add", "192.0.2.1/24", "dev", `${p}a`]);
    sh("ip", ["-n", ns, "link", "set", `${p}a`, "up"]);
    sh("ip", ["-n", ns, "link", "set", `${p}b`, "up"]);
    store = new LocalStore({ path: join(dir, "store.db"), pollIntervalMs: 20 });
  });

  afterEach(async () => {
    await agent?.stop();
    agent = undefined;
    await store.close();
    delNetns(ns);
    rmSync(dir, { recursive: true, force: true });
  });

  async function startAgent(extra: string[] = []): Promise<Agent> {
    const config = parseAgentConfig([
      "--cluster-cidr",
      "10.244.0.0/16",
      "--state-dir",
      join(dir, "state"),
      "--run-dir",
      join(dir, "run"),
      "--reconcile-interval",
      "1000",
      ...extra,
    ]);
    const a = new Agent(config, {
      store,
      logger: pino({ level: "silent" }),
      underlay: { iface: `${p}a`, publicIP: "192.0.2.1", family: 4, mtu: 1500 },
      dataplane: (spec, logger) => openVxlanDataplane(spec, logger, ns),
    });
    await a.start();
    await until(
      () => a.readiness(),
      (r) => r.ready,
      "agent ready",
    );
    return a;
  }

  // While the device is being recreated, `dev berth.1` does not resolve: read that as "nothing".
  const orNone = <T>(read: () => T[]): T[] => {
    try {
      return read();
    } catch {
      return [];
    }
  };
  const neigh = () => orNone(() => ipJson(["neigh", "show", "dev", "berth.1"], ns).filter((n) => n.state?.includes("PERMANENT")));
  const fdb = () => orNone(() => bridgeJson(["fdb", "show", "dev", "berth.1"], ns).filter((f) => f.dst));
  const routes = () => orNone(() => ipJson(["route", "show", "dev", "berth.1"], ns).filter((r) => r.protocol !== "kernel"));

  it("creates the device as specified and tells the CNI plugin through overlay.json", async () => {
    agent = await startAgent();
    const lease = agent.leaseView()!;
    const [link] = ipJson(["link", "show", "berth.1"], ns);
    expect(link.mtu).toBe(1450);
    expect(link.address).toBe(lease.vtepMAC);
    expect(link.operstate === "UNKNOWN" || link.operstate === "UP").toBe(true);
    expect(link.linkinfo.info_kind).toBe("vxlan");
    expect(link.linkinfo.info_data).toMatchObject({ id: 1, local: "192.0.2.1", port: 4789, learning: false, link: `${p}a` });
    const addrs = ipJson(["addr", "show", "dev", "berth.1"], ns)[0].addr_info.filter(
      (a: { family: string }) => a.family === "inet",
    );
    expect(addrs.map((a: { local: string; prefixlen: number }) => `${a.local}/${a.prefixlen}`)).toEqual([
      `${lease.subnet.split("/")[0]}/32`,
    ]);
    expect(sh("ip", ["netns", "exec", ns, "cat", "/proc/sys/net/ipv6/conf/berth.1/accept_ra"]).trim()).toBe("0");
    const runtime = JSON.parse(readFileSync(join(dir, "run", "overlay.json"), "utf8"));
    expect(runtime).toMatchObject({
      ready: true,
      subnet: lease.subnet,
      network: "10.244.0.0/16",
      mtu: 1450,
      vni: 1,
      device: "berth.1",
    });
    expect(runtime.gateway).toBe(lease.subnet.replace(/\.0\/24$/, ".1"));
    const ready = await httpOverUnix(agent.config.apiSocket, "/readyz");
    expect(ready.status).toBe(200);
    const leaseApi = JSON.parse((await httpOverUnix(agent.config.apiSocket, "/v1/lease")).body);
    expect(leaseApi.subnet).toBe(lease.subnet);
    await agent.stop();
    expect(JSON.parse(readFileSync(join(dir, "run", "overlay.json"), "utf8")).ready).toBe(false);
    agent = undefined;
  });

  it("programs, updates, repairs and removes a remote host", async () => {
    // No periodic runs within the test: repairs must come from the kernel's change events.
    agent = await startAgent(["--reconcile-interval", "600000"]);
    const key = subnetKey(PREFIX, Subnet.parse("10.244.200.0/24"));
    const value = { publicIP: "192.0.2.2", vtepMAC: "02:aa:00:00:00:02", vni: 1, hostname: "remote" };
    const created = await store.create(key, JSON.stringify(value), 60);
    if (!created.ok) throw new Error("create failed");

    await until(neigh, (n) => n.some((e) => e.dst === "10.244.200.0" && e.lladdr === "02:aa:00:00:00:02"), "neighbour");
    await until(fdb, (f) => f.some((e) => e.mac === "02:aa:00:00:00:02" && e.dst === "192.0.2.2"), "fdb entry");
    const [route] = await until(routes, (r) => r.length === 1, "route");
    expect(route).toMatchObject({ dst: "10.244.200.0/24", gateway: "10.244.200.0" });
    expect(route.flags).toContain("onlink");
    expect(fdb()[0].state).toBe("permanent");
    expect((await httpOverUnix(agent.config.apiSocket, "/v1/peers")).body).toContain("10.244.200.0/24");

    // The remote host comes back with another MAC: new entries, and the old FDB entry is gone.
    const replaced = await store.replace(key, JSON.stringify({ ...value, vtepMAC: "02:bb:00:00:00:02" }), 60, created.revision);
    expect(replaced.ok).toBe(true);
    await until(fdb, (f) => f.length === 1 && f[0].mac === "02:bb:00:00:00:02", "fdb entry follows the MAC");
    await until(neigh, (n) => n.length === 1 && n[0].lladdr === "02:bb:00:00:00:02", "neighbour follows the MAC");

    // Someone deletes the FDB entry by hand: repaired, and counted as a repair.
    sh("bridge", ["-n", ns, "fdb", "del", "02:bb:00:00:00:02", "dev", "berth.1", "dst", "192.0.2.2", "self"]);
    await until(fdb, (f) => f.length === 1, "fdb entry repaired", 3000);
    const metrics = (await httpOverUnix(agent.config.apiSocket, "/metrics")).body;
    expect(metrics).toMatch(/berth_overlay_reconcile_operations_total\{op="fdb-replace",reason="drift"\} [1-9]/);

    // Someone deletes the device: it comes back with everything on it.
    sh("ip", ["-n", ns, "link", "del", "berth.1"]);
    await until(routes, (r) => r.length === 1, "device recreated with its route", 5000);
    await until(fdb, (f) => f.length === 1, "device recreated with its fdb entry");
    expect(neigh()).toHaveLength(1);

    // The remote lease goes away: all three entries go.
    await store.delete(key);
    await until(
      () => [neigh().length, fdb().length, routes().length],
      (c) => c.every((n) => n === 0),
      "entries removed",
    );
  });

  it("keeps the same subnet and MAC across an agent restart, without touching peer entries", async () => {
    agent = await startAgent();
    const first = agent.leaseView()!;
    await store.create(
      subnetKey(PREFIX, Subnet.parse("10.244.201.0/24")),
      JSON.stringify({ publicIP: "192.0.2.3", vtepMAC: "02:cc:00:00:00:03", vni: 1, hostname: "r" }),
      60,
    );
    await until(routes, (r) => r.length === 1, "route");
    await agent.stop();
    agent = await startAgent();
    const second = agent.leaseView()!;
    expect(second.subnet).toBe(first.subnet);
    expect(second.vtepMAC).toBe(first.vtepMAC);
    // The restart found everything in place: no kernel operation was needed.
    const text = await agent.metrics.registry.getSingleMetricAsString("berth_overlay_reconcile_operations_total");
    expect(text).not.toMatch(/reason="change"\} [1-9]/);
    expect(routes()).toHaveLength(1);
  });

  it("dual-stack: one device carries both families (IPv6 neighbour and route, one FDB entry)", async () => {
    agent = await startAgent(["--cluster-cidr", "fd00:10:244::/48"]);
    const lease = agent.leaseView()!;
    expect(lease.subnetV6).toMatch(/^fd00:10:244:[0-9a-f]+::\/64$/);
    const v6 = ipJson(["-6", "addr", "show", "dev", "berth.1"], ns)[0].addr_info.map(
      (a: { local: string; prefixlen: number }) => `${a.local}/${a.prefixlen}`,
    );
    expect(v6).toContain(`${lease.subnetV6!.split("/")[0]}/128`);
    expect(JSON.parse(readFileSync(join(dir, "run", "overlay.json"), "utf8")).subnets).toEqual([lease.subnet, lease.subnetV6]);

    await store.create(
      subnetKey(PREFIX, Subnet.parse("10.244.202.0/24"), Subnet.parse("fd00:10:244:ca::/64")),
      JSON.stringify({ publicIP: "192.0.2.4", vtepMAC: "02:dd:00:00:00:04", vni: 1, hostname: "r6" }),
      60,
    );
    const routes6 = () =>
      orNone(() => ipJson(["-6", "route", "show", "dev", "berth.1"], ns).filter((r) => r.protocol !== "kernel"));
    const [r6] = await until(routes6, (r) => r.length === 1, "IPv6 route");
    expect(r6).toMatchObject({ dst: "fd00:10:244:ca::/64", gateway: "fd00:10:244:ca::" });
    const n6 = ipJson(["-6", "neigh", "show", "dev", "berth.1"], ns).filter((n) => n.state?.includes("PERMANENT"));
    expect(n6.map((n) => [n.dst, n.lladdr])).toEqual([["fd00:10:244:ca::", "02:dd:00:00:00:04"]]);
    await until(routes, (r) => r.length === 1, "IPv4 route");
    expect(fdb()).toHaveLength(1);
  });

  it("gets its lease back at once when it is revoked under the running agent", async () => {
    agent = await startAgent();
    const before = agent.leaseView()!;
    const entry = await store.get(before.key);
    await store.revoke(entry!.leaseId!);
    await until(
      () => store.get(before.key),
      (e) => e !== null && e.leaseId !== entry!.leaseId,
      "lease re-acquired",
      5000,
    );
    expect(agent.leaseView()!.subnet).toBe(before.subnet);
  });
});
