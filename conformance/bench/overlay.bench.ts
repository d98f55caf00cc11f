// Overlay benchmark (not a test): a 3-host cluster on etcd in network namespaces (see
// testing/cluster.ts), measured from outside:
//
//   node --import tsx conformance/bench/overlay.bench.ts [--peers 1000] [--rounds 10] [--iperf-seconds 5] [--iperf-rounds 4]
//        [--agent-command "node build/berth.cjs agent"]
//
// - convergence: a new lease written to etcd → its route on all 3 hosts (the route is the last
//   entry the agent installs for a peer, after neighbour and FDB), timed by `ip monitor route`
//   in each host netns, so no polling delay is added;
// - scale: N synthetic leases in one etcd transaction → all N routes on h1 (polled every 10 ms),
//   then all hosts, then their removal when the etcd lease behind them is revoked;
// - throughput: iperf3 container → container across the overlay, against the same VXLAN L3
//   scheme set up by hand with `ip` in two more host netns on the same underlay, alternated,
//   medians compared;
// - agent RSS (/proc/<pid>/status VmRSS) before and with N peers.
import { spawn } from "node:child_process";
import { parseArgs } from "node:util";
import {
  ChildLog,
  Cluster,
  type Container,
  DEVICE,
  ETCD_PREFIX,
  type Host,
  ipJson,
  rssKiB,
  run,
  sleep,
  until,
  waitAddressesSettled,
} from "../../testing/cluster.ts";

const { values: opts } = parseArgs({
  options: {
    peers: { type: "string", default: "1000" },
    rounds: { type: "string", default: "10" },
    "iperf-seconds": { type: "string", default: "5" },
    "iperf-rounds": { type: "string", default: "4" },
    /** The agent's argv prefix, space-separated (default: node --import tsx bin/cli.ts agent). */
    "agent-command": { type: "string" },
  },
});
const PEERS = Number(opts.peers);
const ROUNDS = Number(opts.rounds);
const IPERF_SECONDS = Number(opts["iperf-seconds"]);
const IPERF_ROUNDS = Number(opts["iperf-rounds"]);

// 4096 /24s: room for the real hosts (the agents pick among the first 100 free ones), the
// convergence rounds (from index 200) and the bulk peers (from index 1000).
const CLUSTER_CIDR = "172.16.0.0/12";

function subnetAt(i: number): string {
  return `172.${16 + (i >> 8)}.${i & 255}.0/24`;
}

/** A lease in the agent's format (overlay/README.md): flannel's key, our JSON value. */
function syntheticLease(i: number): { key: string; value: string; subnet: string } {
  const subnet = subnetAt(i);
  const mac = `02:5e:${[(i >> 8) & 255, i & 255, 0xab, 0xcd].map((b) => b.toString(16).padStart(2, "0")).join(":")}`;
  return {
    key: `${ETCD_PREFIX}/subnets/${subnet.replace("/", "-")}`,
    value: JSON.stringify({ publicIP: `10.249.${i >> 8}.${i & 255}`, vtepMAC: mac, vni: 1, hostname: `synthetic-${i}` }),
    subnet,
  };
}

/** `ip monitor route` on one host: resolves when a route to `subnet` is added. */
class RouteMonitor {
  private readonly log: ChildLog;
  private waiters: { token: string; resolve: (t: number) => void }[] = [];
  private buf = "";

  constructor(readonly host: Host) {
    const child = spawn("ip", ["-n", host.ns, "monitor", "route"], { stdio: ["ignore", "pipe", "pipe"] });
    this.log = new ChildLog(`ip monitor ${host.name}`, child);
    child.stdout.on("data", (d: Buffer) => {
      const at = performance.now();
      this.buf += d.toString();
      const lines = this.buf.split("\n");
      this.buf = lines.pop()!;
      for (const line of lines) {
        if (line.startsWith("Deleted")) continue;
        this.waiters = this.waiters.filter((w) => {
          if (!line.startsWith(`${w.token} `)) return true;
          w.resolve(at);
          return false;
        });
      }
    });
  }

  added(subnet: string): Promise<number> {
    return new Promise((resolve) => this.waiters.push({ token: subnet, resolve }));
  }

  stop(): Promise<void> {
    return this.log.stop("SIGKILL");
  }
}

async function routeCount(host: Host): Promise<number> {
  return (await host.routes(4)).length;
}

function median(xs: number[]): number {
  return stats(xs).median;
}

function stats(xs: number[]): { median: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length / 2;
  const median = s.length % 2 ? s[Math.floor(mid)]! : (s[mid - 1]! + s[mid]!) / 2;
  return { median: s.length ? median : Number.NaN, max: s[s.length - 1] ?? Number.NaN };
}

// ---------------------------------------------------------------- throughput

/** Where iperf3 runs: a container netns and its address. */
type Endpoint = Pick<Container, "name" | "ns" | "ipv4">;

/** The same L3-over-VXLAN scheme the agent programs, by hand, between two fresh host netns. */
async function handMadeVxlan(cluster: Cluster): Promise<Endpoint[]> {
  const p = cluster.prefix;
  const nodes = [1, 2].map((k) => ({ k, ns: `${p}x${k}`, ip: "", mac: `02:00:00:00:00:0${k}` }));
  for (const n of nodes) n.ip = await cluster.plugIntoUnderlay(n.ns, 100 + n.k);
  const containers: Endpoint[] = [];
  for (const n of nodes) {
    const ip = (args: string[]) => run("ip", ["-n", n.ns, ...args]);
    await run("ip", ["netns", "exec", n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    await ip(
      ["link", "add", DEVICE, "address", n.mac, "mtu", "1450", "type", "vxlan", "id", "1"].concat([
        "local",
        n.ip,
        "dev",
        `${p}u`,
        "dstport",
        "4789",
        "nolearning",
      ]),
    );
    await ip(["addr", "add", `192.168.${n.k}.0/32`, "dev", DEVICE]);
    await ip(["link", "set", DEVICE, "up"]);
    await ip(["link", "add", "hb", "type", "bridge"]);
    await ip(["addr", "add", `192.168.${n.k}.1/24`, "dev", "hb"]);
    await ip(["link", "set", "hb", "up"]);
    const cns = `${p}x${n.k}c`;
    await run("ip", ["netns", "add", cns]);
    cluster.namespaces.push(cns);
    await run("ip", ["link", "add", "eth0", "netns", cns, "mtu", "1450", "type", "veth", "peer", "name", "hv", "netns", n.ns]);
    await ip(["link", "set", "hv", "mtu", "1450", "master", "hb", "up"]);
    await run("ip", ["-n", cns, "addr", "add", `192.168.${n.k}.2/24`, "dev", "eth0"]);
    await run("ip", ["-n", cns, "link", "set", "eth0", "up"]);
    await run("ip", ["-n", cns, "link", "set", "lo", "up"]);
    await run("ip", ["-n", cns, "route", "add", "192.168.0.0/16", "via", `192.168.${n.k}.1`]);
    for (const peer of nodes.filter((x) => x !== n)) {
      await ip(["neigh", "add", `192.168.${peer.k}.0`, "lladdr", peer.mac, "dev", DEVICE, "nud", "permanent"]);
      await run("bridge", ["-n", n.ns, "fdb", "append", peer.mac, "dev", DEVICE, "dst", peer.ip, "self", "permanent"]);
      await ip(["route", "add", `192.168.${peer.k}.0/24`, "via", `192.168.${peer.k}.0`, "dev", DEVICE, "onlink"]);
    }
    containers.push({ name: `x${n.k}c`, ns: cns, ipv4: `192.168.${n.k}.2` });
  }
  return containers;
}

/** iperf3 TCP from `client` to `server` for IPERF_SECONDS; Gbit/s received. */
async function iperf(client: Endpoint, server: Endpoint): Promise<number> {
  const srv = new ChildLog(
    `iperf3 server in ${server.name}`,
    spawn("ip", ["netns", "exec", server.ns, "iperf3", "-s", "-1", "--forceflush", "-B", server.ipv4], {
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
  try {
    await until(
      "iperf3 server listening",
      async () => srv.output(),
      (o) => o.includes("listening"),
      10_000,
      20,
    );
    const out = await run(
      "ip",
      ["netns", "exec", client.ns, "iperf3", "-c", server.ipv4, "-t", String(IPERF_SECONDS), "-J"],
      (IPERF_SECONDS + 30) * 1000,
    );
    const report = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
    return report.end.sum_received.bits_per_second / 1e9;
  } finally {
    await srv.stop("SIGKILL");
  }
}

// ---------------------------------------------------------------- main

interface Row {
  metric: string;
  value: string;
  target?: string;
  verdict?: string;
}

async function main(): Promise<Row[]> {
  const rows: Row[] = [];
  // Each figure also goes to stderr as soon as it is known, so a later failure keeps it.
  const push = rows.push.bind(rows);
  rows.push = (...r: Row[]) => {
    for (const x of r) console.error(`  ${x.metric}: ${x.value}`);
    return push(...r);
  };
  let cluster: Cluster | undefined;
  const stopOnSignal = () => {
    void cluster?.destroy().finally(() => process.exit(130));
  };
  process.once("SIGINT", stopOnSignal);
  process.once("SIGTERM", stopOnSignal);
  const monitors: RouteMonitor[] = [];
  try {
    const agentCommand = opts["agent-command"]?.split(/\s+/).filter(Boolean);
    const options = { clusterCidrs: [CLUSTER_CIDR], leaseTtlSeconds: 3600, reconcileIntervalMs: 5000, agentCommand };
    cluster = await Cluster.create(options, (c) => {
      cluster = c;
    });
    const etcd = cluster.etcd!;
    const hosts: Host[] = [];
    for (let i = 0; i < 3; i++) {
      const h = await cluster.addHost();
      h.startAgent();
      hosts.push(h);
    }
    await Promise.all(hosts.map((h) => h.waitReady()));
    for (const h of hosts)
      await until(
        `${h.name} has 2 peers`,
        () => routeCount(h),
        (n) => n === 2,
        15_000,
      );
    const [h1, h2] = hosts as [Host, Host, Host];
    const rssIdle = rssKiB(h1.agent!.pid);

    // -- convergence: one new lease → programmed on all 3 hosts
    for (const h of hosts) monitors.push(new RouteMonitor(h));
    await sleep(300);
    const samples: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const lease = syntheticLease(200 + r);
      const seen = monitors.map((m) => m.added(lease.subnet));
      const t0 = performance.now();
      await etcd.put(lease.key, lease.value);
      const times = await Promise.race([
        Promise.all(seen),
        sleep(10_000).then(() => {
          throw new Error(`lease ${lease.subnet} not programmed on all hosts within 10 s\n${cluster?.logs()}`);
        }),
      ]);
      samples.push(Math.max(...times) - t0);
      await etcd.etcdctl(["del", lease.key]);
      for (const h of hosts)
        await until(
          "synthetic peer removed",
          () => routeCount(h),
          (n) => n === 2,
          10_000,
          10,
        );
    }
    const conv = stats(samples);
    rows.push({
      metric: `convergence: new lease → route on all 3 hosts (median of ${ROUNDS})`,
      value: `${conv.median.toFixed(1)} ms (max ${conv.max.toFixed(1)})`,
      target: "≤ 100 ms",
      verdict: conv.median <= 100 ? "met" : "MISSED",
    });
    for (const m of monitors.splice(0)) await m.stop();

    // -- scale: PEERS synthetic leases in one transaction
    const leaseId = await etcd.grant(3600);
    const bulk = Array.from({ length: PEERS }, (_, i) => syntheticLease(1000 + i));
    const t0 = performance.now();
    await etcd.putMany(bulk, leaseId);
    const written = performance.now();
    await until(
      `${PEERS} routes on h1`,
      () => routeCount(h1),
      (n) => n >= PEERS + 2,
      120_000,
      10,
    );
    const h1Done = performance.now();
    for (const h of hosts)
      await until(
        `${PEERS} routes on ${h.name}`,
        () => routeCount(h),
        (n) => n >= PEERS + 2,
        120_000,
        10,
      );
    const allDone = performance.now();
    const [fdb, neigh] = await Promise.all([h1.fdb(), h1.neighbours()]);
    if (fdb.length !== PEERS + 2 || neigh.length !== PEERS + 2)
      throw new Error(`h1 holds ${fdb.length} FDB entries and ${neigh.length} neighbours, expected ${PEERS + 2} each`);
    await sleep(6000); // a periodic reconcile over the full table, then measure memory
    const rssLoaded = rssKiB(h1.agent!.pid);
    rows.push({
      metric: `${PEERS} leases in one etcd txn → all programmed on h1`,
      value: `${(h1Done - t0).toFixed(0)} ms (txn ${(written - t0).toFixed(0)} ms; all 3 hosts ${(allDone - t0).toFixed(0)} ms)`,
      target: "≤ 2000 ms",
      verdict: h1Done - t0 <= 2000 ? "met" : "MISSED",
    });
    rows.push({
      metric: `agent RSS (h1${agentCommand ? "" : ", under tsx"})`,
      value: `${(rssIdle / 1024).toFixed(1)} MiB with 2 peers, ${(rssLoaded / 1024).toFixed(1)} MiB with ${PEERS + 2}`,
    });
    const r0 = performance.now();
    await etcd.revoke(leaseId);
    for (const h of hosts)
      await until(
        `${h.name} back to 2 peers`,
        () => routeCount(h),
        (n) => n === 2,
        120_000,
        10,
      );
    rows.push({ metric: `${PEERS} leases revoked → removed on all 3 hosts`, value: `${(performance.now() - r0).toFixed(0)} ms` });

    // -- throughput: berth overlay vs the same VXLAN by hand
    const a = await h1.addContainer();
    const b = await h2.addContainer();
    await Promise.all([a, b].map(waitAddressesSettled));
    const [x1, x2] = await handMadeVxlan(cluster);
    // Alternated, so a neighbour's load on this shared machine hits both sides alike.
    const berth: number[] = [];
    const byHand: number[] = [];
    for (let round = 0; round < IPERF_ROUNDS; round++) {
      if (round % 2 === 0) {
        berth.push(await iperf(a, b));
        byHand.push(await iperf(x1!, x2!));
      } else {
        byHand.push(await iperf(x1!, x2!));
        berth.push(await iperf(a, b));
      }
    }
    const ratio = median(berth) / median(byHand);
    const list = (xs: number[]) => xs.map((x) => x.toFixed(1)).join("/");
    rows.push({
      metric: `TCP throughput, container → container across hosts (iperf3, median of ${IPERF_ROUNDS} × ${IPERF_SECONDS} s)`,
      value: `berth ${median(berth).toFixed(2)} Gbit/s (${list(berth)}) vs by hand ${median(byHand).toFixed(2)} (${list(byHand)}): ${ratio.toFixed(3)}×`,
      target: "≥ 0.95×",
      verdict: ratio >= 0.95 ? "met" : "MISSED",
    });
    const mtu = (await ipJson<{ mtu: number }>(h1.ns, ["link", "show", "dev", DEVICE]))[0]?.mtu;
    rows.push({ metric: "overlay MTU (berth, underlay 1500)", value: String(mtu) });
    return rows;
  } finally {
    for (const m of monitors) await m.stop();
    await cluster?.destroy();
  }
}

function printTable(rows: Row[]): void {
  const head: Row = { metric: "metric", value: "value", target: "target", verdict: "" };
  const all = [head, ...rows];
  const w = (k: keyof Row) => Math.max(...all.map((r) => (r[k] ?? "").length));
  const line = (r: Row) =>
    `${r.metric.padEnd(w("metric"))}  ${r.value.padEnd(w("value"))}  ${(r.target ?? "").padEnd(w("target"))}  ${r.verdict ?? ""}`;
  console.log(line(head));
  console.log("-".repeat(w("metric") + w("value") + w("target") + w("verdict") + 6));
  for (const r of rows) console.log(line(r));
}

main()
  .then((rows) => printTable(rows))
  .catch((e) => {
    console.error(`overlay bench failed: ${(e as Error).message}`);
    process.exitCode = 1;
  });
