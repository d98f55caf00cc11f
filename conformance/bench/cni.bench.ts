// Side-by-side CNI benchmark (not a test): the same workloads, in the same run, against each
// implementation given on the command line, timed as a runtime sees them: fork to reaped exit,
// measured by the native runner berth_cnirun (native/bench/cnirun.c), whose fork+exec+wait is
// what a Go runtime's exec does; `--timer node` times with Node's child_process instead (which
// adds 2-5 ms per call on a small VM to every implementation alike).
//
//   node --import tsx conformance/bench/cni.bench.ts [--impl LABEL=DIR,TYPE,IPAM ...] [--n 100] [--leases 2000]
//                                                    [--timer native|node] [--warmup 50] [--rounds 3]
//
// The implementations are measured side by side, taking turns of 10 samples (see measure), not
// one after the other.
//
// "berth fast" runs the agent's CNI server as installed (`berth cni-server` from the bundle).
// Default: the reference bridge + host-local from /usr/lib/cni, and berth's build/cni/berth-bridge
// + berth-host-local when they exist, twice: "berth fast" with the agent's CNI server running
// (the launcher forwards to it) and "berth cold" with the fast path off (the launcher execs
// Node on the bundled plugin). Prints a table, with berth/reference ratios when both ran.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  type CniInvocation,
  type CniOutcome,
  describeOutcome,
  execPlugin,
  execPluginsTimed,
  timedRunnerAvailable,
} from "../../testing/plugin-exec.ts";
import { ipv4ToInt, Sandbox } from "../../testing/sandbox.ts";
import { ServerProcess } from "../fastpath/server-process.ts";
import { type NetworkShape, networkConfig, type PluginTarget } from "../lib/cni-netconf.ts";
import { addressOf, attachmentView } from "../lib/cni-result.ts";

interface Implementation extends PluginTarget {
  label: string;
  /** berth only: "server" runs the agent's CNI server for this implementation, "off" forces the cold path. */
  fastPath?: "server" | "off";
  /** BERTH_CNI_SOCKET handed to the plugins (set while the server runs). */
  socket?: string;
}

interface Measurements {
  [metric: string]: number;
}

const CNI_VERSION = "1.0.0";
/** Time with berth_cnirun (native/bench/cnirun.c) unless it is not built or --timer node asks for Node's spawn. */
let NATIVE_TIMER = timedRunnerAvailable();

function percentile(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? Number.NaN;
}

function intToIpv4(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join(".");
}

/** Runs `jobs` with at most `limit` in flight. */
async function pooled<T>(jobs: (() => Promise<T>)[], limit: number): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      out[i] = await jobs[i]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  return out;
}

class Bench {
  private seq = 0;
  constructor(
    readonly impl: Implementation,
    readonly sandbox: Sandbox,
  ) {}

  network(prefixLen = 24): NetworkShape {
    const { subnet, base } = this.sandbox.allocateSubnet(prefixLen);
    return { name: `${this.sandbox.prefix}-bench${this.seq++}`, subnet, base };
  }

  invocation(
    command: "ADD" | "DEL",
    net: NetworkShape,
    cid: string,
    netnsPath: string | undefined,
    prevResult?: unknown,
  ): CniInvocation {
    const conf = networkConfig(this.impl, this.sandbox, net, CNI_VERSION);
    return {
      cniPath: this.impl.cniPath,
      type: this.impl.type,
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: cid,
        CNI_NETNS: netnsPath,
        CNI_IFNAME: "eth0",
        BERTH_CNI_SOCKET: this.impl.socket,
      },
      stdin: prevResult ? { ...conf, prevResult } : conf,
    };
  }

  async run(
    command: "ADD" | "DEL",
    net: NetworkShape,
    cid: string,
    netnsPath: string | undefined,
    prevResult?: unknown,
  ): Promise<CniOutcome> {
    return (await this.runAll([this.invocation(command, net, cid, netnsPath, prevResult)], 1)).outcomes[0]!;
  }

  /**
   * Runs invocations at most `parallel` at once. Timed by the native runner (fork to reaped
   * exit, as a runtime's exec) when it is built, else by Node's spawn.
   */
  async runAll(invs: CniInvocation[], parallel: number): Promise<{ outcomes: CniOutcome[]; wallMs: number }> {
    if (NATIVE_TIMER) return execPluginsTimed(invs, parallel);
    const t0 = performance.now();
    const outcomes = await pooled(
      invs.map((inv) => () => execPlugin(inv)),
      parallel,
    );
    return { outcomes, wallMs: performance.now() - t0 };
  }

  /** IPAM-only ADD/DEL: how leases are pre-filled for implementations whose store we cannot write. */
  ipam(command: "ADD" | "DEL", net: NetworkShape, cid: string): Promise<CniOutcome> {
    const conf = networkConfig(this.impl, this.sandbox, net, CNI_VERSION);
    return execPlugin({
      cniPath: this.impl.cniPath,
      type: this.impl.ipam,
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: cid,
        // A netns of our own: "/proc/self/ns/net" is the plugin's own netns, which plugins refuse (code 8).
        CNI_NETNS: this.ipamNetns(),
        CNI_IFNAME: "eth0",
        BERTH_CNI_SOCKET: this.impl.socket,
      },
      // A main plugin hands its IPAM delegate the whole network config unchanged.
      stdin: conf,
    });
  }

  private ipamNetnsPath: string | undefined;
  private ipamNetns(): string {
    this.ipamNetnsPath ??= this.sandbox.createNetns("ipam").path;
    return this.ipamNetnsPath;
  }

  cid(): string {
    return `${this.sandbox.prefix}-${this.seq++}`;
  }
}

function mustSucceed(o: CniOutcome, what: string): Record<string, unknown> {
  if (o.exitCode !== 0) throw new Error(`${what} failed: ${describeOutcome(o)}`);
  return (o.json ?? {}) as Record<string, unknown>;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      impl: { type: "string", multiple: true },
      n: { type: "string", default: "100" },
      warmup: { type: "string", default: "50" },
      rounds: { type: "string", default: "3" },
      leases: { type: "string", default: "2000" },
      timer: { type: "string", default: NATIVE_TIMER ? "native" : "node" },
    },
  });
  if (values.timer !== "native" && values.timer !== "node") throw new Error("--timer: native or node");
  if (values.timer === "native" && !timedRunnerAvailable())
    throw new Error("--timer native: berth_cnirun is not built (npm run build)");
  NATIVE_TIMER = values.timer === "native";
  const n = Number(values.n);
  const leases = Number(values.leases);
  const impls = values.impl?.length ? values.impl.map(parseImpl) : defaultImplementations();
  if (process.getuid?.() !== 0) throw new Error("the CNI benchmark needs root (netns, links)");
  const started: { impl: Implementation; sandbox: Sandbox; socketDir: string; server?: ServerProcess }[] = [];
  let table: { label: string; m: Measurements }[];
  try {
    for (const impl of impls) {
      process.stderr.write(`benchmarking ${impl.label}: ${impl.cniPath}/${impl.type} + ${impl.ipam}\n`);
      const sandbox = new Sandbox();
      const entry: (typeof started)[number] = { impl, sandbox, socketDir: mkdtempSync(`/tmp/${sandbox.prefix}-`) };
      started.push(entry);
      if (impl.fastPath === "server") {
        impl.socket = `${entry.socketDir}/cni.sock`;
        entry.server = await ServerProcess.start(impl.socket, { bundled: true });
      } else if (impl.fastPath === "off") {
        impl.socket = "off";
      }
    }
    const benches = started.map((e) => new Bench(e.impl, e.sandbox));
    const results = await measure(benches, n, leases, Number(values.warmup), Number(values.rounds));
    table = impls.map((impl, i) => {
      results[i]!["peak RSS of one plugin process (MiB)"] = peakRssMiB(impl);
      return { label: impl.label, m: results[i]! };
    });
  } finally {
    for (const e of started) {
      await e.server?.stop();
      e.sandbox.cleanup();
      rmSync(e.socketDir, { recursive: true, force: true });
    }
  }
  printTable(
    table,
    n,
    leases,
    `${values.warmup} warm-up ADD/DEL cycles, samples in turns of ${BLOCK}, parallel bursts median of ${values.rounds}`,
  );
}

function parseImpl(spec: string): Implementation {
  const m = /^([^=]+)=([^,]+),([^,]+),([^,]+)$/.exec(spec);
  if (!m) throw new Error(`--impl ${spec}: expected LABEL=DIR,TYPE,IPAM`);
  const impl = { label: m[1]!, cniPath: resolve(m[2]!), type: m[3]!, ipam: m[4]! };
  for (const exe of [impl.type, impl.ipam]) {
    if (!existsSync(join(impl.cniPath, exe))) throw new Error(`--impl ${spec}: no executable ${exe} in ${impl.cniPath}`);
  }
  return impl;
}

function defaultImplementations(): Implementation[] {
  const impls: Implementation[] = [{ label: "reference", cniPath: "/usr/lib/cni", type: "bridge", ipam: "host-local" }];
  const berth = resolve("build/cni");
  if (existsSync(join(berth, "berth-bridge")) && existsSync(join(berth, "berth-host-local"))) {
    const target = { cniPath: berth, type: "berth-bridge", ipam: "berth-host-local" };
    impls.push({ label: "berth fast", ...target, fastPath: "server" }, { label: "berth cold", ...target, fastPath: "off" });
  } else {
    process.stderr.write("build/cni/berth-bridge not built: benchmarking the reference alone\n");
  }
  return impls;
}

/** Samples an implementation takes in a row before the next one's turn (see measure). */
const BLOCK = 10;

/**
 * The implementations take turns, BLOCK samples each (reference, fast, cold, reference, ...),
 * so that a noisy stretch of a shared VM lands on all of them alike and the ratios hold still,
 * while each is measured in its own steady state (a sample right after another
 * implementation's Node or Go process finds the CPU caches full of that process); the
 * parallel bursts alternate the same way, `rounds` times each, median.
 */
async function measure(benches: Bench[], n: number, leases: number, warmup: number, rounds: number): Promise<Measurements[]> {
  const ms: Measurements[] = benches.map(() => ({}));
  const each = async (fn: (b: Bench, i: number) => Promise<void>) => {
    for (const [i, b] of benches.entries()) await fn(b, i);
  };
  /** `count` samples of each implementation, taken in turns of BLOCK samples per implementation. */
  const inTurns = async (count: number, fn: (b: Bench, i: number, k: number) => Promise<void>) => {
    for (let start = 0; start < count; start += BLOCK) {
      await each(async (b, i) => {
        for (let k = start; k < Math.min(count, start + BLOCK); k++) await fn(b, i, k);
      });
    }
  };

  // 0. Warm-up, not measured: `warmup` ADD/DEL cycles on a network of their own, for every
  // implementation alike (page cache, the reference's files; a resident agent that has served
  // before, as it has on any node that has run a pod).
  const warmNets = benches.map((b) => b.network());
  await inTurns(warmup, async (b, i) => {
    const ns = b.sandbox.createNetns("w");
    const cid = b.cid();
    const add = mustSucceed(await b.run("ADD", warmNets[i]!, cid, ns.path), "warm-up ADD");
    mustSucceed(await b.run("DEL", warmNets[i]!, cid, ns.path, add), "warm-up DEL");
    b.sandbox.deleteNetns(ns.name);
  });

  // 1. Sequential ADD, then sequential DEL, one netns each.
  await sequential("sequential", n, 24, false);

  // 2. n ADDs all at once (a node starting n pods), then n DELs all at once.
  const addWall: number[][] = benches.map(() => []);
  const delWall: number[][] = benches.map(() => []);
  for (let r = 0; r < rounds; r++) {
    await each(async (b, i) => {
      const net = b.network();
      const netns = Array.from({ length: n }, () => b.sandbox.createNetns("p"));
      const cids = netns.map(() => b.cid());
      const adds = await b.runAll(
        netns.map((ns, j) => b.invocation("ADD", net, cids[j]!, ns.path)),
        n,
      );
      addWall[i]!.push(adds.wallMs);
      const results = adds.outcomes.map((o) => mustSucceed(o, "parallel ADD"));
      const addrs = results.map((res) => addressOf(attachmentView(res).ips[0]?.address ?? ""));
      const distinct = new Set(addrs).size;
      if (distinct !== n) throw new Error(`${b.impl.label}: parallel ADD handed out ${n - distinct} duplicate addresses`);
      const dels = await b.runAll(
        netns.map((ns, j) => b.invocation("DEL", net, cids[j]!, ns.path, results[j])),
        n,
      );
      delWall[i]!.push(dels.wallMs);
      for (const o of dels.outcomes) mustSucceed(o, "parallel DEL");
      for (const ns of netns) b.sandbox.deleteNetns(ns.name);
    });
  }
  benches.forEach((_, i) => {
    ms[i]![`${n} parallel ADD wall (ms)`] = percentile(addWall[i]!, 50);
    ms[i]![`${n} parallel DEL wall (ms)`] = percentile(delWall[i]!, 50);
  });

  // 3. ADD and DEL on a network that already holds `leases` addresses.
  await sequential(`@${leases} leases`, 30, 20, true);
  return ms;

  async function sequential(tag: string, samples: number, prefixLen: number, prefilled: boolean): Promise<void> {
    const nets = benches.map((b) => b.network(prefixLen));
    const held: string[][] = [];
    if (prefilled) for (const [i, b] of benches.entries()) held[i] = await prefill(b, nets[i]!, leases);
    const netns = benches.map((b) => Array.from({ length: samples }, () => b.sandbox.createNetns(prefilled ? "l" : "s")));
    const adds: { cid: string; path: string; result: unknown }[][] = benches.map(() => []);
    const addMs: number[][] = benches.map(() => []);
    const delMs: number[][] = benches.map(() => []);
    await inTurns(samples, async (b, i, k) => {
      const cid = b.cid();
      const path = netns[i]![k]!.path;
      const o = await b.run("ADD", nets[i]!, cid, path);
      adds[i]!.push({ cid, path, result: mustSucceed(o, `ADD (${tag})`) });
      addMs[i]!.push(o.durationMs);
    });
    await inTurns(samples, async (b, i, k) => {
      const a = adds[i]![k]!;
      const o = await b.run("DEL", nets[i]!, a.cid, a.path, a.result);
      mustSucceed(o, `DEL (${tag})`);
      delMs[i]!.push(o.durationMs);
    });
    benches.forEach((b, i) => {
      const m = ms[i]!;
      if (prefilled) {
        m[`ADD p50 @${leases} leases (ms)`] = percentile(addMs[i]!, 50);
        m[`ADD p90 @${leases} leases (ms)`] = percentile(addMs[i]!, 90);
        m[`DEL p50 @${leases} leases (ms)`] = percentile(delMs[i]!, 50);
      } else {
        m["ADD sequential p50 (ms)"] = percentile(addMs[i]!, 50);
        m["ADD sequential p90 (ms)"] = percentile(addMs[i]!, 90);
        m["DEL sequential p50 (ms)"] = percentile(delMs[i]!, 50);
        m["DEL sequential p90 (ms)"] = percentile(delMs[i]!, 90);
      }
      for (const ns of netns[i]!) b.sandbox.deleteNetns(ns.name);
    });
    if (prefilled) for (const [i, b] of benches.entries()) await release(b, nets[i]!, held[i]!);
  }
}

/**
 * Holds `count` addresses on `net`. The reference host-local's store is one file per address
 * (named by the IP, holding "<cid>\r\n<ifname>"), so it is written directly; any other IPAM
 * gets real IPAM ADDs. Returns the container ids that need an IPAM DEL afterwards.
 */
async function prefill(b: Bench, net: NetworkShape, count: number): Promise<string[]> {
  if (b.impl.ipam === "host-local" && b.impl.cniPath === "/usr/lib/cni") {
    const dir = join(b.sandbox.dataDir, net.name);
    mkdirSync(dir, { recursive: true });
    const first = ipv4ToInt(`${net.base}.2`);
    for (let i = 0; i < count; i++) writeFileSync(join(dir, intToIpv4(first + i)), `${b.sandbox.prefix}-held${i}\r\neth0`);
    writeFileSync(join(dir, "last_reserved_ip.0"), intToIpv4(first + count - 1));
    return [];
  }
  const cids = Array.from({ length: count }, (_, i) => `${b.sandbox.prefix}-held${i}`);
  await pooled(
    cids.map((cid) => async () => mustSucceed(await b.ipam("ADD", net, cid), "IPAM pre-fill ADD")),
    8,
  );
  return cids;
}

async function release(b: Bench, net: NetworkShape, cids: string[]): Promise<void> {
  await pooled(
    cids.map((cid) => () => b.ipam("DEL", net, cid)),
    8,
  );
}

/**
 * Peak RSS of the plugin process for a VERSION call (GNU time's %M). For berth's fast path that
 * is the launcher alone: the plugin work happens in the resident agent. On the cold path the
 * plugin is the Node child the launcher starts, which the launcher does not wait for (it ends
 * at the child's status byte, so GNU time would see the launcher only): Node is measured by
 * running it as the launcher does.
 */
function peakRssMiB(impl: Implementation): number {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, CNI_COMMAND: "VERSION" };
  if (impl.socket) env.BERTH_CNI_SOCKET = impl.socket;
  const nodeDir = join(impl.cniPath, "..", "cni-node");
  const command =
    impl.fastPath === "off"
      ? [process.execPath, "--preserve-symlinks-main", join(nodeDir, "boot.cjs"), join(nodeDir, `${impl.type}.cjs`)]
      : [join(impl.cniPath, impl.type)];
  const samples = [1, 2, 3].map(() => {
    const res = spawnSync("/usr/bin/time", ["-f", "%M", ...command], {
      env,
      input: `{"cniVersion":"${CNI_VERSION}"}`,
      encoding: "utf8",
    });
    return Number(res.stderr.trim().split("\n").pop()) / 1024;
  });
  return percentile(samples, 50);
}

function fmt(x: number | undefined): string {
  return x === undefined || Number.isNaN(x) ? "-" : x >= 100 ? x.toFixed(0) : x.toFixed(1);
}

function printTable(rows: { label: string; m: Measurements }[], n: number, leases: number, method: string): void {
  const metrics = [...new Set(rows.flatMap((r) => Object.keys(r.m)))];
  const ref = rows.find((r) => r.label === "reference");
  // One ratio column per other implementation, against the reference.
  const compared = ref ? rows.filter((r) => r !== ref) : [];
  const header = ["metric", ...rows.map((r) => r.label), ...compared.map((r) => `${r.label}/ref`)];
  const lines = metrics.map((metric) => [
    metric,
    ...rows.map((r) => fmt(r.m[metric])),
    ...compared.map((r) => `${((r.m[metric] ?? Number.NaN) / (ref!.m[metric] ?? Number.NaN)).toFixed(2)}x`),
  ]);
  const widths = header.map((_, i) => Math.max(...[header, ...lines].map((l) => l[i]!.length)));
  const show = (l: string[]) => l.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  const timer = NATIVE_TIMER ? "berth_cnirun (fork to exit)" : "node child_process (spawn to close)";
  process.stdout.write(
    `CNI benchmark: n=${n} namespaces, ${leases} leases held, cniVersion ${CNI_VERSION}, ${method}, timed by ${timer}\n`,
  );
  process.stdout.write(`${show(header)}\n${widths.map((w) => "-".repeat(w)).join("  ")}\n`);
  for (const l of lines) process.stdout.write(`${show(l)}\n`);
}

main().catch((e) => {
  process.stderr.write(`cni bench failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
