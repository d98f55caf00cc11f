// Docker Engine benchmark (`npm run bench:docker`, not a test):
//   node --import tsx conformance/bench/docker.bench.ts [--iterations 20]
// In one run, against one private dockerd (Debian docker.io, testing/docker.ts), the wall time
// of `docker run --rm IMAGE true`:
//   1. on a berth network (berth docker-plugin as NetworkDriver + IpamDriver) vs on a network of
//      Docker's own `bridge` driver;
//   2. with a berth volume mounted (64 MiB, capacity-enforced ext4 on a loop device) vs with a
//      `local` volume (a directory), both on `--network none`.
// The two sides of a pair run alternately, after two warm-up runs each; p50 and p90 are printed
// with the ratio berth / Docker's own (the target: p50 ratio <= 1.1). Everything it
// made (containers, networks, volumes, plugin, dockerd, mounts, loop devices, nftables table,
// dirs) is removed at the end or on SIGINT.
import { type ChildProcess, execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  berthNetworkCreate,
  DOCKER_PLUGIN_DIR,
  type DockerEngine,
  missingForDockerTest,
  startDockerd,
  startDockerPlugin,
} from "../../testing/docker.ts";
import { testPrefix } from "../../testing/kernel.ts";
import { teardownKernelObjects } from "../../testing/storage.ts";

const _ROOT = resolve(import.meta.dirname, "../..");
const { values } = parseArgs({ options: { iterations: { type: "string", default: "20" } } });
const iterations = Number(values.iterations);
if (!Number.isInteger(iterations) || iterations < 1 || iterations > 1000) {
  process.stderr.write(`--iterations must be an integer 1-1000, got ${values.iterations}\n`);
  process.exit(2);
}

const prefix = testPrefix();
const base = `/tmp/${prefix}-dockerbench`;
const plugin = `${prefix}b`;
const socket = join(DOCKER_PLUGIN_DIR, `${plugin}.sock`);
const octet = 1 + Math.floor(Math.random() * 250);

let child: ChildProcess | undefined;
let engine: DockerEngine | undefined;
let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    if (engine) {
      await engine.tryDocker(["volume", "rm", "-f", "vb", "vl"]);
      await engine.cleanup();
    }
    if (child?.pid && child.exitCode === null) {
      const exited = new Promise((r) => child!.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(socket, { force: true });
    try {
      execFileSync("nft", ["delete", "table", "inet", prefix], { stdio: "ignore" });
    } catch {}
    teardownKernelObjects(base);
    rmSync(base, { recursive: true, force: true });
  })();
  return cleaning;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function timeRun(args: string[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  await engine!.docker(["run", "--rm", ...args, engine!.image, "true"]);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** Alternates the two sides, two warm-up runs each first; returns sorted wall times in ms. */
async function pair(a: string[], b: string[]): Promise<[number[], number[]]> {
  for (let i = 0; i < 2; i++) {
    await timeRun(a);
    await timeRun(b);
  }
  const ta: number[] = [];
  const tb: number[] = [];
  for (let i = 0; i < iterations; i++) {
    ta.push(await timeRun(a));
    tb.push(await timeRun(b));
  }
  return [ta.sort((x, y) => x - y), tb.sort((x, y) => x - y)];
}

function row(label: string, berth: number[], own: number[], ownLabel: string): string {
  const r = percentile(berth, 50) / percentile(own, 50);
  const f = (v: number) => `${v.toFixed(0).padStart(5)} ms`;
  return [
    `${label.padEnd(34)} p50 ${f(percentile(berth, 50))}  p90 ${f(percentile(berth, 90))}`,
    `${ownLabel.padEnd(34)} p50 ${f(percentile(own, 50))}  p90 ${f(percentile(own, 90))}`,
    `${"ratio berth / Docker's own (p50)".padEnd(34)} ${r.toFixed(2)}x ${r <= 1.1 ? "(within 1.1x)" : "(above the 1.1x target)"}`,
  ].join("\n");
}

async function main(): Promise<number> {
  const missing = missingForDockerTest();
  if (missing.length > 0) {
    process.stderr.write(`bench:docker needs ${missing.join(", ")} (apt-get install docker.io busybox-static)\n`);
    return 2;
  }
  rmSync(socket, { force: true });
  const args = ["--csi-dir", join(base, "csi"), "--docker-dir", join(base, "dock"), "--ipam-dir", join(base, "ipam")];
  args.push("--nft-table", prefix, "--overlay-run-dir", join(base, "no-agent"));
  child = (await startDockerPlugin({ socket, args, env: { ...process.env, BERTH_LOG_LEVEL: "warn" } })).child;
  engine = await startDockerd(join(base, "engine"));
  const d = engine.docker;
  await d(berthNetworkCreate(plugin, `10.196.${octet}.0/24`, "nb", [`berth.bridge=${prefix}n`]));
  await d([
    "network",
    "create",
    "-d",
    "bridge",
    "--subnet",
    `10.195.${octet}.0/24`,
    "-o",
    `com.docker.network.bridge.name=${prefix}r`,
    "nr",
  ]);
  await d(["volume", "create", "-d", plugin, "--opt", "size=64M", "vb"]);
  await d(["volume", "create", "vl"]);

  const out = [
    `docker run --rm ${engine.image} true, ${iterations} runs per side (after 2 warm-up runs), alternating; Docker ${(await d(["version", "--format", "{{.Server.Version}}"])).stdout.trim()}`,
  ];
  const [nb, nr] = await pair(["--network", "nb"], ["--network", "nr"]);
  out.push("", row("berth network (docker-plugin)", nb, nr, "Docker bridge network"));
  const [vb, vl] = await pair(["--network", "none", "-v", "vb:/data"], ["--network", "none", "-v", "vl:/data"]);
  out.push("", row("berth volume 64 MiB (docker-plugin)", vb, vl, "Docker local volume"));
  process.stdout.write(`${out.join("\n")}\n`);
  return 0;
}

process.once("SIGINT", () => {
  void cleanup().then(() => process.exit(130));
});
main().then(
  async (code) => {
    await cleanup();
    process.exitCode = code;
  },
  async (e: unknown) => {
    process.stderr.write(`bench:docker: ${e instanceof Error ? e.message : String(e)}\n`);
    await cleanup();
    process.exitCode = 1;
  },
);
