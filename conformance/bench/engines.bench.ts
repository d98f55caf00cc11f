// Side-by-side engine benchmark (not a test): containerd 1.6's CRI running pod sandboxes, timed
// as a kubelet sees them: RunPodSandbox, then StopPodSandbox + RemovePodSandbox, wall time per
// call. The same chain (bridge + host-local, portmap, firewall, bandwidth; each pod with one
// hostPort) on three networks, each under its own containerd, in one run, taking turns sample
// by sample:
//   berth fast  berth as `berth install` lays it out, with the installed `berth cni-server`
//               answering on the fast-path socket
//   berth cold  the same install with the fast path off (every plugin call a fresh Node)
//   reference   Debian's containernetworking-plugins from /usr/lib/cni
//
//   node --import tsx conformance/bench/engines.bench.ts [--n 30] [--warmup 3]
//
// Prints p50/p90 per implementation and the berth/reference ratios. The reference plugins
// program iptables (their portmap and firewall chains stay, empty, after the run).
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  Containerd,
  type CriNetwork,
  installBerthChain,
  missingForContainerd,
  referenceChain,
  removeDir,
} from "../../testing/containerd.ts";
import { testPrefix } from "../../testing/kernel.ts";

interface Impl {
  label: string;
  net: CriNetwork;
  env: Record<string, string>;
  hostPort: number;
  cd?: Containerd;
  run: number[];
  stop: number[];
  total: number[];
}

function percentile(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? Number.NaN;
}

/** The installed `berth cni-server` (the release's CLI bundle), resolved once it listens. */
function startInstalledServer(prefix: string, socket: string): Promise<ChildProcess> {
  const child = spawn(join(prefix, "bin", "berth"), ["cni-server", "--socket", socket, "--quiet"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((done, fail) => {
    child.stdout!.on("data", (b: Buffer) => {
      if (b.toString().includes("listening ")) done(child);
    });
    child.once("exit", (code) => fail(new Error(`berth cni-server exited with ${code}`)));
  });
}

async function sample(impl: Impl, i: number): Promise<void> {
  const cri = impl.cd!.cri;
  const t0 = performance.now();
  const id = await cri.runPod({
    name: `bench-${i}`,
    uid: `${impl.net.prefix}-${i}`,
    port_mappings: [{ protocol: "TCP", container_port: 8080, host_port: impl.hostPort }],
  });
  const t1 = performance.now();
  await cri.stopPod(id);
  await cri.removePod(id);
  const t2 = performance.now();
  impl.run.push(t1 - t0);
  impl.stop.push(t2 - t1);
  impl.total.push(t2 - t0);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { n: { type: "string", default: "30" }, warmup: { type: "string", default: "3" } },
    strict: true,
  });
  const n = Number(values.n);
  const warmup = Number(values.warmup);
  const missing = missingForContainerd();
  if (missing.length > 0) throw new Error(`missing ${missing.join(", ")}`);

  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-bench-engines-`));
  const impls: Impl[] = [];
  let server: ChildProcess | undefined;
  let berth: CriNetwork | undefined;
  let reference: CriNetwork | undefined;
  try {
    process.stderr.write("installing berth and building the sandbox image...\n");
    berth = await installBerthChain(dir);
    reference = referenceChain(dir, berth.image);
    const socket = join(dir, "cni.sock");
    server = await startInstalledServer(join(dir, "berth"), socket);
    const base = 20000 + Math.floor(Math.random() * 20000);
    impls.push(
      { label: "berth fast", net: berth, env: { BERTH_CNI_SOCKET: socket }, hostPort: base, run: [], stop: [], total: [] },
      { label: "berth cold", net: berth, env: { BERTH_CNI_SOCKET: "off" }, hostPort: base + 1, run: [], stop: [], total: [] },
      { label: "reference", net: reference, env: {}, hostPort: base + 2, run: [], stop: [], total: [] },
    );
    for (const [k, impl] of impls.entries()) {
      impl.cd = await Containerd.start({
        dir: join(dir, `containerd-${k}`),
        cniBinDir: impl.net.binDir,
        cniConfDir: impl.net.confDir,
        env: impl.env,
        image: impl.net.image,
      });
    }
    process.stderr.write(`measuring: ${warmup} warm-up + ${n} pods per implementation, taking turns\n`);
    for (let i = 0; i < warmup + n; i++) {
      // Rotate who goes first, so no implementation always follows the same one.
      for (let k = 0; k < impls.length; k++) await sample(impls[(i + k) % impls.length]!, i);
      if (i + 1 === warmup) for (const impl of impls) impl.run.length = impl.stop.length = impl.total.length = 0;
    }
    printTable(impls, n);
  } finally {
    for (const impl of impls) await impl.cd?.stop();
    server?.kill("SIGTERM");
    await berth?.cleanup();
    await reference?.cleanup();
    await removeDir(dir);
  }
}

function printTable(impls: Impl[], n: number): void {
  const ref = impls.find((i) => i.label === "reference")!;
  const rows: [string, (i: Impl) => number[]][] = [
    ["RunPodSandbox", (i) => i.run],
    ["StopPodSandbox + RemovePodSandbox", (i) => i.stop],
    ["Run + Stop + Remove", (i) => i.total],
  ];
  const lines = [
    `containerd 1.6 CRI, chain bridge + host-local, portmap, firewall, bandwidth; ${n} pods each (ms)`,
    "",
    `| ${["metric", ...impls.map((i) => i.label), ...impls.filter((i) => i !== ref).map((i) => `${i.label} / ref`)].join(" | ")} |`,
    `|${" --- |".repeat(1 + impls.length * 2 - 1)}`,
  ];
  for (const [name, of] of rows) {
    for (const p of [50, 90]) {
      const r = percentile(of(ref), p);
      const cells = impls.map((i) => percentile(of(i), p).toFixed(0));
      const ratios = impls.filter((i) => i !== ref).map((i) => `${(percentile(of(i), p) / r).toFixed(2)}x`);
      lines.push(`| ${name} p${p} | ${[...cells, ...ratios].join(" | ")} |`);
    }
  }
  process.stdout.write(`${lines.join("\n")}\n`);
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench:engines: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
