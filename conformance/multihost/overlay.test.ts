// The multi-host overlay scenario: etcd, three (then four) hosts, two containers each, all on
// one machine in network namespaces (see cluster.ts). Every check reads the kernel or moves
// real packets; the agents' own API is used only for their lease and readiness.
import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ChildLog,
  Cluster,
  type Container,
  DEVICE,
  ETCD_PREFIX,
  type Host,
  type LeaseView,
  monitorDevice,
  run,
  sleep,
  tcpTransfer,
  unreachablePairs,
  until,
  waitAddressesSettled,
} from "../../testing/cluster.ts";

const MiB = 1 << 20;

/** What host `h` must hold for peer `p`, derived from the peer's kernel and lease. */
interface PeerFacts {
  host: Host;
  lease: LeaseView;
  mac: string;
}

function networkAddress(cidr: string): string {
  return cidr.split("/")[0]!;
}

async function peerFacts(host: Host): Promise<PeerFacts> {
  const lease = await host.lease();
  const dev = await host.device();
  if (!dev) throw new Error(`${host.name}: no ${DEVICE}`);
  return { host, lease, mac: dev.address };
}

const sortBy = <T>(xs: T[], key: (x: T) => string) => [...xs].sort((a, b) => (key(a) < key(b) ? -1 : 1));

/** The kernel's view of the overlay on `host`, reduced to comparable facts. */
async function kernelView(host: Host) {
  const [neigh, fdb, r4, r6] = await Promise.all([host.neighbours(), host.fdb(), host.routes(4), host.routes(6)]);
  return {
    neighbours: sortBy(
      neigh.map((n) => ({ dst: n.dst, lladdr: n.lladdr, permanent: n.state.includes("PERMANENT") })),
      (n) => n.dst,
    ),
    fdb: sortBy(
      fdb.map((f) => ({ mac: f.mac, dst: f.dst, permanent: f.state === "permanent" })),
      (f) => f.mac,
    ),
    routes: sortBy(
      [...r4, ...r6].map((r) => ({ dst: r.dst, gateway: r.gateway, onlink: r.flags.includes("onlink") })),
      (r) => r.dst,
    ),
  };
}

/** Exactly one neighbour (per family), FDB entry and route per remote host, nothing else. */
function expectedView(peers: PeerFacts[]) {
  const neighbours: { dst: string; lladdr: string; permanent: boolean }[] = [];
  const routes: { dst: string; gateway: string; onlink: boolean }[] = [];
  for (const p of peers) {
    for (const subnet of [p.lease.subnet, p.lease.subnetV6].filter((s): s is string => !!s)) {
      neighbours.push({ dst: networkAddress(subnet), lladdr: p.mac, permanent: true });
      routes.push({ dst: subnet, gateway: networkAddress(subnet), onlink: true });
    }
  }
  return {
    neighbours: sortBy(neighbours, (n) => n.dst),
    fdb: sortBy(
      peers.map((p) => ({ mac: p.mac, dst: p.host.underlayIP, permanent: true })),
      (f) => f.mac,
    ),
    routes: sortBy(routes, (r) => r.dst),
  };
}

/** Waits until every host in `hosts` holds exactly the entries for the others in `hosts`. */
async function expectConverged(hosts: Host[], timeoutMs = 10_000): Promise<number> {
  const facts = await Promise.all(hosts.map(peerFacts));
  const started = performance.now();
  for (const h of hosts) {
    const want = expectedView(facts.filter((f) => f.host !== h));
    const got = await until(
      `${h.name} programmed for ${hosts.length - 1} peers`,
      () => kernelView(h),
      (v) => JSON.stringify(v) === JSON.stringify(want),
      timeoutMs,
    ).catch(() => kernelView(h));
    expect(got, `${h.name}'s kernel state`).toEqual(want);
  }
  return performance.now() - started;
}

function allContainers(hosts: Host[]): Container[] {
  return hosts.flatMap((h) => h.containers);
}

describe.sequential("overlay across hosts on etcd", () => {
  let cluster: Cluster | undefined;
  const figures: string[] = [];
  let hosts: Host[] = [];

  const fail = (e: unknown): never => {
    throw new Error(`${(e as Error).message}\n${cluster?.logs()}`);
  };

  beforeAll(async () => {
    cluster = await Cluster.create(
      { clusterCidrs: ["10.251.0.0/16", "fd00:251::/48"], leaseTtlSeconds: 10, reconcileIntervalMs: 1000 },
      (c) => {
        cluster = c;
      },
    );
    try {
      for (let i = 0; i < 3; i++) (await cluster.addHost()).startAgent();
      hosts = [...cluster.hosts];
      await Promise.all(hosts.map((h) => h.waitReady()));
      for (const h of hosts) {
        await h.addContainer();
        await h.addContainer();
      }
      await Promise.all(allContainers(hosts).map(waitAddressesSettled));
    } catch (e) {
      fail(e);
    }
  }, 120_000);

  afterAll(async () => {
    if (figures.length) console.log(`multi-host overlay figures:\n  ${figures.join("\n  ")}`);
    await cluster?.destroy();
  });

  it("every container reaches every other: ICMP over IPv4 and IPv6, 1 MiB over TCP", async () => {
    const containers = allContainers(hosts);
    expect(containers).toHaveLength(6);
    // Distinct subnets per host, addresses inside them.
    const leases = await Promise.all(hosts.map((h) => h.lease()));
    expect(new Set(leases.map((l) => l.subnet)).size).toBe(3);
    expect(new Set(leases.map((l) => l.subnetV6)).size).toBe(3);
    expect(await unreachablePairs(containers, 4)).toEqual([]);
    expect(await unreachablePairs(containers, 6)).toEqual([]);
    // TCP across every host pair, both directions, counted and hashed by the receiver.
    for (const a of hosts) {
      for (const b of hosts) {
        if (a === b) continue;
        const t = await tcpTransfer(a.containers[0]!, b.containers[1]!, MiB);
        expect(t.received, `${a.name}→${b.name}`).toBe(t.sent);
        expect(t.sent.startsWith(`${MiB} `)).toBe(true);
      }
    }
    const t6 = await tcpTransfer(hosts[0]!.containers[0]!, hosts[2]!.containers[0]!, MiB, 6);
    expect(t6.received).toBe(t6.sent);
  });

  it("each host holds exactly one neighbour (per family), FDB entry and route per remote host", async () => {
    await expectConverged(hosts);
    // And the device itself: VXLAN id 1, learning off, local = the host's underlay address.
    for (const h of hosts) {
      const dev = (await h.device())!;
      const vx = dev.linkinfo?.info_data as { id: number; learning: boolean; local: string; port: number };
      expect(vx.id).toBe(1);
      expect(vx.learning).toBe(false);
      expect(vx.local).toBe(h.underlayIP);
      expect(vx.port).toBe(4789);
    }
  });

  it("a fourth host joins and every container reaches it within 5 s", async () => {
    const h4 = await cluster!.addHost();
    const started = performance.now();
    h4.startAgent();
    let leasedAt = 0;
    try {
      await until(
        "h4 holds a lease",
        () => h4.lease(),
        () => true,
        30_000,
        10,
      );
      leasedAt = performance.now();
      // All four hosts programmed (h4 for three peers, the others for h4): polled every 10 ms.
      const target = [...hosts, h4];
      await until(
        "all hosts programmed with h4",
        async () => {
          const facts = await Promise.all(target.map((h) => peerFacts(h)));
          const views = await Promise.all(target.map(kernelView));
          return views.every(
            (v, i) => JSON.stringify(v) === JSON.stringify(expectedView(facts.filter((f) => f.host !== target[i]))),
          );
        },
        (ok) => ok,
        10_000,
        10,
      );
    } catch (e) {
      fail(e);
    }
    const programmedAt = performance.now();
    hosts = [...hosts, h4];
    await h4.waitReady();
    const c = await h4.addContainer();
    await waitAddressesSettled(c);
    const others = allContainers(hosts).filter((x) => x !== c);
    const unreachable = await Promise.all(others.map(async (o) => ((await unreachablePairs([o, c])).length ? o.name : null)));
    const reachableAt = performance.now();
    expect(unreachable.filter(Boolean)).toEqual([]);
    expect(await unreachablePairs([hosts[0]!.containers[0]!, c], 6)).toEqual([]);
    const joinMs = programmedAt - leasedAt;
    figures.push(
      `join: lease held → all 4 hosts programmed ${joinMs.toFixed(0)} ms (agent start → lease ${(leasedAt - started).toFixed(0)} ms; + container ADD and full ping mesh ${(reachableAt - programmedAt).toFixed(0)} ms)`,
    );
    expect(joinMs).toBeLessThan(5000);
  });

  it("an agent restart keeps its subnet and VTEP MAC and does not interrupt traffic", async () => {
    const h2 = hosts[1]!;
    const before = await peerFacts(h2);
    const devBefore = (await h2.device())!;
    const from = hosts[0]!.containers[0]!;
    const loop = new ChildLog(
      "ping loop",
      spawn("ip", ["netns", "exec", from.ns, "busybox", "ping", "-i", "0.1", "-W", "1", h2.containers[0]!.ipv4], {
        stdio: ["ignore", "pipe", "pipe"],
      }),
    );
    try {
      await sleep(500);
      const down = performance.now();
      await h2.stopAgent("SIGTERM");
      h2.startAgent();
      await h2.waitReady();
      const readyMs = performance.now() - down;
      await sleep(2000); // a couple of reconcile runs after the restart
      await loop.stop("SIGINT");
      const m = /(\d+) packets transmitted, (\d+) packets received/.exec(loop.output());
      expect(m, loop.output()).not.toBeNull();
      const [sent, got] = [Number(m![1]), Number(m![2])];
      figures.push(
        `restart: agent down → ready again ${readyMs.toFixed(0)} ms; ping every 100 ms: ${sent - got} of ${sent} lost`,
      );
      expect(sent).toBeGreaterThan(20);
      expect(sent - got).toBeLessThanOrEqual(1);
    } finally {
      await loop.stop("SIGKILL");
    }
    const after = await peerFacts(h2);
    expect(after.lease.subnet).toBe(before.lease.subnet);
    expect(after.lease.subnetV6).toBe(before.lease.subnetV6);
    expect(after.mac).toBe(before.mac);
    // Adopted, not recreated.
    expect((await h2.device())!.ifindex).toBe(devBefore.ifindex);
    await expectConverged(hosts);
  });

  it("repairs a hand-deleted FDB entry, route, neighbour and the whole VXLAN device", async () => {
    const [h1, h2, h3] = hosts as [Host, Host, Host];
    const p2 = await peerFacts(h2);
    const p3 = await peerFacts(h3);
    // Positive control for the outage test's "no kernel operation": the monitor sees these.
    const monitor = monitorDevice(h1);
    await sleep(300);
    const timed = async (what: string, damage: () => Promise<unknown>, repaired: () => Promise<boolean>) => {
      // The deletion succeeding proves the entry was there; the agent may put it back before
      // the first poll below (kernel events trigger a reconcile), so none checks it is gone.
      await damage();
      const t0 = performance.now();
      await until(`${what} repaired`, repaired, (ok) => ok, 5000, 20).catch(fail);
      figures.push(`repair: ${what} back after ${(performance.now() - t0).toFixed(0)} ms`);
    };
    await timed(
      "FDB entry",
      () => run("bridge", ["-n", h1.ns, "fdb", "del", p2.mac, "dev", DEVICE, "dst", h2.underlayIP, "self"]),
      async () => (await h1.fdb()).some((f) => f.mac === p2.mac && f.dst === h2.underlayIP),
    );
    await timed(
      "route",
      () => run("ip", ["-n", h1.ns, "route", "del", p3.lease.subnet, "dev", DEVICE]),
      async () => (await h1.routes(4)).some((r) => r.dst === p3.lease.subnet),
    );
    const n2 = networkAddress(p2.lease.subnet);
    await timed(
      "neighbour",
      () => run("ip", ["-n", h1.ns, "neigh", "del", n2, "dev", DEVICE]),
      async () => (await h1.neighbours()).some((n) => n.dst === n2 && n.lladdr === p2.mac),
    );
    const oldIndex = (await h1.device())!.ifindex;
    await timed(
      "VXLAN device",
      () => run("ip", ["-n", h1.ns, "link", "del", DEVICE]),
      async () => {
        const dev = await h1.device();
        return dev !== null && dev.ifindex !== oldIndex;
      },
    );
    await monitor.stop();
    expect(monitor.lines.some((l) => l.includes("Deleted") && l.includes(p2.mac))).toBe(true);
    expect(monitor.lines.some((l) => l.includes("Deleted") && l.includes(p3.lease.subnet))).toBe(true);
    await expectConverged(hosts);
    expect(await unreachablePairs(allContainers(hosts), 4)).toEqual([]);
  });

  it("keeps traffic flowing through a 60 s etcd outage and recovers without touching unchanged peers", async () => {
    const etcd = cluster!.etcd!;
    const stateBefore = await Promise.all(hosts.map(kernelView));
    const monitors = hosts.map((h) => monitorDevice(h));
    await sleep(300); // monitors subscribed
    try {
      const down = performance.now();
      await etcd.kill();
      // Every agent notices and says so on /readyz.
      for (const h of hosts) {
        const r = await until(
          "readyz 503",
          () => h.api("/readyz"),
          (r) => r.status === 503,
          20_000,
          100,
        ).catch(fail);
        expect(r.body).toMatch(/unreachable/);
      }
      figures.push(`etcd outage: all agents not-ready after ${(performance.now() - down).toFixed(0)} ms`);
      // Traffic keeps flowing through the outage.
      for (const at of [20_000, 40_000, 58_000]) {
        await sleep(Math.max(0, at - (performance.now() - down)));
        expect(await unreachablePairs(allContainers(hosts), 4), `ping mesh ${at / 1000} s into the outage`).toEqual([]);
      }
      await sleep(Math.max(0, 60_000 - (performance.now() - down)));
      await etcd.start();
      const back = performance.now();
      for (const h of hosts)
        await until(
          "readyz 200",
          () => h.api("/readyz"),
          (r) => r.status === 200,
          30_000,
          100,
        ).catch(fail);
      figures.push(`etcd back: all agents ready after ${(performance.now() - back).toFixed(0)} ms`);
      await sleep(3000); // a few reconcile runs
      expect(await Promise.all(hosts.map(kernelView))).toEqual(stateBefore);
    } finally {
      for (const m of monitors) await m.stop();
    }
    // No kernel operation on the peers' entries at all: nothing deleted, nothing re-added. (The
    // kernel's own traffic on the device, multicast neighbours and link-local routes, is noise.)
    const tokens = new Set(
      stateBefore.flatMap((v) => [...v.fdb.map((f) => f.mac), ...v.neighbours.map((n) => n.dst), ...v.routes.map((r) => r.dst)]),
    );
    const touched = monitors.flatMap((m) => m.lines).filter((l) => l.split(/\s+/).some((w) => tokens.has(w)));
    expect(touched).toEqual([]);
    expect(tokens.size).toBeGreaterThan(0);
    // Every host's lease survived the outage.
    const keys = (await etcd.list(`${ETCD_PREFIX}/subnets/`)).map((e) => e.key);
    for (const h of hosts) expect(keys).toContain((await h.lease()).key);
    expect(await unreachablePairs(allContainers(hosts), 4)).toEqual([]);
    // And the agents watch again: a lease written now reaches every host at once, not after
    // whatever backoff the outage built up.
    const subnet = "10.251.250.0/24";
    const key = `${ETCD_PREFIX}/subnets/10.251.250.0-24`;
    const value = { publicIP: cluster!.underlayIP(200), vtepMAC: "02:5e:00:00:fa:01", vni: 1, hostname: "synthetic" };
    const t0 = performance.now();
    await etcd.put(key, JSON.stringify(value));
    try {
      for (const h of hosts) {
        await until(
          `${h.name} programs a lease written after the outage`,
          () => h.routes(4),
          (rs) => rs.some((r) => r.dst === subnet),
          5000,
          20,
        ).catch(fail);
      }
      figures.push(`etcd back: a new lease programmed on all hosts ${(performance.now() - t0).toFixed(0)} ms after the write`);
    } finally {
      await etcd.etcdctl(["del", key]);
    }
    for (const h of hosts) {
      await until(
        `${h.name} drops it`,
        () => h.routes(4),
        (rs) => !rs.some((r) => r.dst === subnet),
        5000,
        20,
      ).catch(fail);
    }
  }, 150_000);

  it("a host that dies disappears from every other host once its lease expires", async () => {
    const h4 = hosts[3]!;
    const gone = await peerFacts(h4);
    const rest = hosts.slice(0, 3);
    await h4.stopAgent("SIGKILL");
    const t0 = performance.now();
    await until(
      "h4's lease expired",
      () => cluster!.etcd!.list(`${ETCD_PREFIX}/subnets/`),
      (kvs) => !kvs.some((kv) => kv.key === gone.lease.key),
      20_000,
      100,
    ).catch(fail);
    const expiredAt = performance.now();
    for (const h of rest) {
      await until(
        `${h.name} forgot h4`,
        () => kernelView(h),
        (v) =>
          !v.fdb.some((f) => f.mac === gone.mac) &&
          !v.neighbours.some((n) => n.lladdr === gone.mac) &&
          !v.routes.some((r) => r.dst === gone.lease.subnet || r.dst === gone.lease.subnetV6),
        5000,
        20,
      ).catch(fail);
    }
    figures.push(
      `leave (SIGKILL, TTL 10 s): lease expired after ${(expiredAt - t0).toFixed(0)} ms, entries gone on all hosts ${(performance.now() - expiredAt).toFixed(0)} ms later`,
    );
    hosts = rest;
    await expectConverged(rest);
    expect(await unreachablePairs(allContainers(rest), 4)).toEqual([]);
  }, 60_000);
});
