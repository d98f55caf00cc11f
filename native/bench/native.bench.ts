// Benchmark of berth's rtnetlink layer against iproute2 on the same kernel, in one run.
// berth: per-operation p50/p99 of the synchronous API. iproute2: one `ip -batch` process
// per batch of N operations, cost per operation = wall / N (process start-up amortised).
// Run: npm run bench:native. Everything lives in two throwaway namespaces deleted at the end.
import { execFileSync } from "node:child_process";
import { Rtnl } from "../netlink/socket.ts";
import { createNetns, deleteNetns, Netns } from "../netns.ts";

const tag = `berthbench${process.pid % 100000}`;
const NS_A = `${tag}-a`;
const NS_B = `${tag}-b`;
const NS_DUMP = `${tag}-dump`;

interface Row {
  op: string;
  berthP50: number;
  berthP99: number;
  ipPerOp: number;
  ipNote: string;
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] as number;
}

/** Milliseconds per call of `fn(i)`, i = 0..n-1, after `warm` unmeasured calls. */
function timeEach(n: number, fn: (i: number) => void, warm = 5): number[] {
  for (let i = 0; i < warm; i++) fn(n + i);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = process.hrtime.bigint();
    fn(i);
    out.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  return out.sort((x, y) => x - y);
}

/** Milliseconds per line of one `ip -n ns -batch -` run. */
function ipBatch(ns: string, lines: string[], options: string[] = []): number {
  const t = process.hrtime.bigint();
  execFileSync("ip", ["-n", ns, ...options, "-batch", "-"], {
    input: `${lines.join("\n")}\n`,
    stdio: ["pipe", "ignore", "inherit"],
  });
  return Number(process.hrtime.bigint() - t) / 1e6 / lines.length;
}

function row(op: string, berth: number[], ipPerOp: number, ipNote = "ip -batch, wall/N"): Row {
  return { op, berthP50: quantile(berth, 0.5), berthP99: quantile(berth, 0.99), ipPerOp, ipNote };
}

function fmt(ms: number): string {
  return ms < 1 ? `${(ms * 1000).toFixed(0)} µs` : `${ms.toFixed(2)} ms`;
}

function print(rows: Row[]): void {
  const head = ["operation", "berth p50", "berth p99", "iproute2 per op", "ip / berth p50", "iproute2 measured as"];
  const body = rows.map((r) => [
    r.op,
    fmt(r.berthP50),
    fmt(r.berthP99),
    fmt(r.ipPerOp),
    `${(r.ipPerOp / r.berthP50).toFixed(1)}x`,
    r.ipNote,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] as number)).join("  ");
  console.log(line(head));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const b of body) console.log(line(b));
}

function main(): void {
  const rows: Row[] = [];
  for (const n of [NS_A, NS_B, NS_DUMP]) createNetns(n);
  const a = Netns.open(NS_A);
  const b = Netns.open(NS_B);
  const rtnl = Rtnl.open(a);
  try {
    rtnl.linkSet("lo", { up: true });
    rtnl.linkAdd({ kind: "veth", name: "d0", peer: { name: "d0p" }, up: true });
    rtnl.linkSet("d0p", { up: true });

    // 1. Open a netlink socket in another namespace (and close it).
    const open = timeEach(500, () => Rtnl.open(b).close());
    const spawnEach = timeEach(30, () => execFileSync("ip", ["-n", NS_B, "link", "show", "dev", "lo"], { stdio: "ignore" }), 2);
    rows.push(row("open socket in another netns", open, quantile(spawnEach, 0.5), "one `ip -n NS` process (cannot batch), p50"));

    // 2. Create + delete a veth pair (the delete waits for an RCU barrier in the kernel).
    const N_VETH = 100;
    const veth = timeEach(N_VETH, (i) => {
      rtnl.linkAdd({ kind: "veth", name: `bv${i}`, peer: { name: `bv${i}p` } });
      rtnl.linkDel(`bv${i}`);
    });
    const vethLines: string[] = [];
    for (let i = 0; i < N_VETH; i++) vethLines.push(`link add iv${i} type veth peer name iv${i}p`, `link del iv${i}`);
    rows.push(row("create + delete veth pair", veth, ipBatch(NS_A, vethLines) * 2));

    // 3. Create a veth pair with the peer directly in another namespace (the CNI ADD shape).
    const N_XNS = 300;
    const xns = timeEach(N_XNS, (i) => rtnl.linkAdd({ kind: "veth", name: `bx${i}`, peer: { name: `bx${i}c`, netns: b } }));
    const xnsLines: string[] = [];
    for (let i = 0; i < N_XNS; i++) xnsLines.push(`link add ix${i} type veth peer name ix${i}c netns ${NS_B}`);
    rows.push(row("create veth, peer in other netns", xns, ipBatch(NS_A, xnsLines)));

    // Callers hold the ifindex (from linkAdd/linkGet); a name costs one extra RTM_GETLINK per
    // verb, where iproute2 resolves it once per batch.
    const d0 = rtnl.linkIndex("d0");

    // 4. Add an address.
    const N_ADDR = 1000;
    const addr = timeEach(N_ADDR, (i) => rtnl.addrAdd(d0, `10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`));
    const addrLines: string[] = [];
    for (let i = 0; i < N_ADDR; i++) addrLines.push(`addr add 10.${120 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32 dev d0`);
    rows.push(row("add an address", addr, ipBatch(NS_A, addrLines)));

    // 5. Add a route.
    const N_ROUTE = 1000;
    const route = timeEach(N_ROUTE, (i) =>
      rtnl.routeAdd({ dst: `10.${140 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`, dev: d0 }),
    );
    const routeLines: string[] = [];
    for (let i = 0; i < N_ROUTE; i++) routeLines.push(`route add 10.${160 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32 dev d0`);
    rows.push(row("add a route", route, ipBatch(NS_A, routeLines)));

    // 6. Dump 1,000 links (500 veth pairs made by iproute2 in their own namespace).
    const mk: string[] = [];
    for (let i = 0; i < 500; i++) mk.push(`link add dv${i} type veth peer name dv${i}p`);
    ipBatch(NS_DUMP, mk);
    const dumpSock = Rtnl.open(NS_DUMP);
    try {
      const count = dumpSock.linkList().length;
      if (count < 1000) throw new Error(`expected 1000+ links to dump, found ${count}`);
      const dump = timeEach(50, () => dumpSock.linkList(), 5);
      rows.push(
        row(
          `dump ${count} links`,
          dump,
          ipBatch(NS_DUMP, Array(50).fill("link show"), ["-d"]),
          "ip -d -batch `link show`, wall/N",
        ),
      );
    } finally {
      dumpSock.close();
    }
  } finally {
    rtnl.close();
    a.close();
    b.close();
    // Deleting the namespaces takes every link, address and route made above with them.
    for (const n of [NS_A, NS_B, NS_DUMP]) deleteNetns(n);
  }
  console.log(
    `berth rtnetlink vs iproute2 (${execFileSync("ip", ["-V"], { encoding: "utf8" }).trim()}), node ${process.version}`,
  );
  print(rows);
}

main();
