// The overlay under store faults, on one shared etcd and cluster: a frozen etcd (SIGSTOP), a host
// started while etcd is down, and etcd coming back wiped. The lease TTL is an hour, so nothing
// here can lean on lease renewals to notice the store. Every check reads the kernel, moves real
// packets, or reads the agents' /readyz and /metrics.
import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ChildLog,
  Cluster,
  type Container,
  ETCD_PREFIX,
  type Host,
  monitorDevice,
  run,
  sleep,
  unreachablePairs,
  until,
  waitAddressesSettled,
} from "../../testing/cluster.ts";

const sortBy = <T>(xs: T[], key: (x: T) => string) => [...xs].sort((a, b) => (key(a) < key(b) ? -1 : 1));

/** The peers' entries on `host` as the kernel holds them. */
async function kernelView(host: Host) {
  const [neigh, fdb, r4] = await Promise.all([host.neighbours(), host.fdb(), host.routes(4)]);
  return {
    neighbours: sortBy(
      neigh.map((n) => `${n.dst} ${n.lladdr}`),
      (s) => s,
    ),
    fdb: sortBy(
      fdb.map((f) => `${f.mac} ${f.dst}`),
      (s) => s,
    ),
    routes: sortBy(
      r4.map((r) => `${r.dst} via ${r.gateway}`),
      (s) => s,
    ),
  };
}

/** /readyz's status and berth_overlay_ready, read back to back. */
async function health(h: Host): Promise<{ readyz: number; gauge: number }> {
  const readyz = (await h.api("/readyz")).status;
  const metrics = (await h.api("/metrics")).body;
  const m = /^berth_overlay_ready (\S+)$/m.exec(metrics);
  return { readyz, gauge: m ? Number(m[1]) : Number.NaN };
}

/** A ping every 100 ms from `from` to `to`; stop() returns how many were sent and answered. */
function pingLoop(from: Container, to: string): { stop(): Promise<{ sent: number; got: number; output: string }> } {
  const loop = new ChildLog(
    "ping loop",
    spawn("ip", ["netns", "exec", from.ns, "busybox", "ping", "-i", "0.1", "-W", "1", to], {
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  return {
    stop: async () => {
      await loop.stop("SIGINT");
      const m = /(\d+) packets transmitted, (\d+) packets received/.exec(loop.output());
      return { sent: Number(m?.[1] ?? 0), got: Number(m?.[2] ?? 0), output: loop.output() };
    },
  };
}

describe.sequential("overlay under store faults (shared etcd, TTL 1 h)", () => {
  let cluster: Cluster | undefined;
  const figures: string[] = [];

  const fail = (e: unknown): never => {
    throw new Error(`${(e as Error).message}\n${cluster?.logs()}`);
  };

  beforeAll(async () => {
    cluster = await Cluster.create({ leaseTtlSeconds: 3600, reconcileIntervalMs: 1000 }, (c) => {
      cluster = c;
    });
    try {
      for (let i = 0; i < 2; i++) (await cluster.addHost()).startAgent();
      await Promise.all(cluster.hosts.map((h) => h.waitReady()));
      for (const h of cluster.hosts) await waitAddressesSettled(await h.addContainer());
      expect(await unreachablePairs(cluster.hosts.flatMap((h) => h.containers))).toEqual([]);
    } catch (e) {
      fail(e);
    }
  }, 90_000);

  afterAll(async () => {
    if (figures.length) console.log(`overlay fault figures:\n  ${figures.join("\n  ")}`);
    cluster?.etcd?.resume();
    await cluster?.destroy();
  });

  it("/readyz and berth_overlay_ready go unready within seconds of a frozen etcd, and ready after", async () => {
    const etcd = cluster!.etcd!;
    const hosts = cluster!.hosts;
    for (const h of hosts) expect(await health(h)).toEqual({ readyz: 200, gauge: 1 });
    const frozen = performance.now();
    etcd.freeze();
    try {
      for (const h of hosts) {
        // The gauge is read right after /readyz: both must say the same thing on every poll.
        await until(
          `${h.name} unready`,
          () => health(h),
          (s) => s.readyz === 503 && s.gauge === 0,
          6000,
          100,
        ).catch(fail);
      }
      figures.push(`etcd frozen: all agents unready after ${(performance.now() - frozen).toFixed(0)} ms`);
      await sleep(1000);
      for (const h of hosts) expect(await health(h)).toEqual({ readyz: 503, gauge: 0 });
    } finally {
      etcd.resume();
    }
    const thawed = performance.now();
    for (const h of hosts) {
      await until(
        `${h.name} ready again`,
        () => health(h),
        (s) => s.readyz === 200 && s.gauge === 1,
        6000,
        100,
      ).catch(fail);
    }
    figures.push(`etcd thawed: all agents ready after ${(performance.now() - thawed).toFixed(0)} ms`);
    expect(await unreachablePairs(hosts.flatMap((h) => h.containers))).toEqual([]);
  }, 30_000);

  it("a host whose underlay link goes down goes unready within seconds, and ready once it is back", async () => {
    const h1 = cluster!.hosts[0]!;
    const down = performance.now();
    await run("ip", ["-n", h1.ns, "link", "set", h1.underlayIface, "down"]);
    try {
      await until(
        "h1 unready",
        () => health(h1),
        (s) => s.readyz === 503 && s.gauge === 0,
        6000,
        100,
      ).catch(fail);
      figures.push(`underlay down: h1 unready after ${(performance.now() - down).toFixed(0)} ms`);
    } finally {
      await run("ip", ["-n", h1.ns, "link", "set", h1.underlayIface, "up"]);
    }
    await until(
      "h1 ready again",
      () => health(h1),
      (s) => s.readyz === 200 && s.gauge === 1,
      10_000,
      100,
    ).catch(fail);
    expect(await unreachablePairs(cluster!.hosts.flatMap((h) => h.containers))).toEqual([]);
  }, 30_000);

  it("a host started while etcd is down joins within seconds of etcd's return", async () => {
    const etcd = cluster!.etcd!;
    const [h1, h2] = cluster!.hosts as [Host, Host];
    await etcd.kill();
    const h3 = await cluster!.addHost();
    h3.startAgent();
    // Long enough for any backoff that doubles from 0.5 s to have grown past 8 s.
    await sleep(20_000);
    expect((await h3.api("/readyz")).status).toBe(503);
    await etcd.start(); // returns once etcd answers /health
    const back = performance.now();
    let leaseKey = "";
    await until(
      "h3 ready",
      () => h3.api("/readyz"),
      (r) => r.status === 200,
      30_000,
      50,
    ).catch(fail);
    const readyMs = performance.now() - back;
    const l3 = await h3.lease();
    leaseKey = l3.key;
    for (const h of [h1, h2]) {
      await until(
        `${h.name} routes h3's subnet`,
        () => h.routes(4),
        (rs) => rs.some((r) => r.dst === l3.subnet),
        30_000,
        50,
      ).catch(fail);
    }
    const programmedMs = performance.now() - back;
    figures.push(
      `join during an outage: h3 ready ${readyMs.toFixed(0)} ms after etcd is healthy, routed by all ${programmedMs.toFixed(0)} ms`,
    );
    await waitAddressesSettled(await h3.addContainer());
    expect(leaseKey.startsWith(`${ETCD_PREFIX}/subnets/`)).toBe(true);
    expect(readyMs).toBeLessThan(3000);
    expect(programmedMs).toBeLessThan(3000);
    expect(await unreachablePairs(cluster!.hosts.flatMap((h) => h.containers))).toEqual([]);
  }, 90_000);

  it("etcd coming back wiped keeps the mesh: no peer entry deleted, traffic flows, every host re-registers", async () => {
    const etcd = cluster!.etcd!;
    const hosts = cluster!.hosts;
    expect(hosts).toHaveLength(3);
    const leases = await Promise.all(hosts.map((h) => h.lease()));
    const before = await Promise.all(hosts.map(kernelView));
    for (const v of before) expect(v.routes).toHaveLength(2);
    const monitors = hosts.map((h) => monitorDevice(h, ["route", "neigh"]));
    const [c1, c2, c3] = hosts.map((h) => h.containers[0]!) as [Container, Container, Container];
    const loops = [pingLoop(c1, c2.ipv4), pingLoop(c2, c3.ipv4), pingLoop(c3, c1.ipv4)];
    try {
      await sleep(500);
      await etcd.kill();
      rmSync(join(etcd.dir, "data"), { recursive: true, force: true });
      await sleep(2000);
      await etcd.start();
      // Every host's lease is back in the new store, on the same subnet.
      await until(
        "all three leases re-registered",
        async () => (await etcd.list(`${ETCD_PREFIX}/subnets/`)).map((e) => e.key).sort(),
        (keys) => JSON.stringify(keys) === JSON.stringify(leases.map((l) => l.key).sort()),
        15_000,
        100,
      ).catch(fail);
      for (const h of hosts) await h.waitReady(10_000);
      await sleep(3000); // a few reconcile runs on the re-listed store
    } finally {
      const results = [];
      for (const l of loops) results.push(await l.stop());
      for (const m of monitors) await m.stop();
      for (const [i, r] of results.entries()) {
        figures.push(`wipe: ping loop ${i + 1}: ${r.sent - r.got} of ${r.sent} lost`);
        expect(r.sent, r.output).toBeGreaterThan(30);
        expect(r.sent - r.got, `ping loop ${i + 1}`).toBeLessThanOrEqual(1);
      }
    }
    // Not one kernel operation on a peer's entries: nothing deleted, nothing re-added.
    const tokens = new Set(before.flatMap((v) => [...v.fdb, ...v.neighbours, ...v.routes].map((s) => s.split(" ")[0]!)));
    const touched = monitors.flatMap((m) => m.lines).filter((l) => l.split(/\s+/).some((w) => tokens.has(w)));
    expect(touched).toEqual([]);
    expect(await Promise.all(hosts.map(kernelView))).toEqual(before);
    for (const [i, h] of hosts.entries()) expect((await h.lease()).subnet).toBe(leases[i]!.subnet);
    expect(await unreachablePairs(hosts.flatMap((h) => h.containers))).toEqual([]);
  }, 90_000);
});
