// Kubernetes pod start-up benchmark (not a test): on one live cluster (../shared/k8s, v1.20.2,
// containerd 1.6, one node), the time from `kubectl apply` of N pods (busybox, one container
// each) to all of them Running with an address, first on the reference bridge plugin + host-local
// (v1.3.0, the kit's own network), then on berth deployed by `kubectl apply -f deploy/kubernetes/`
// (the overlay on the node's podCIDR, the agent's fast path). Each round deletes the pods and
// waits until kubelet has garbage-collected their sandboxes, so every round starts on a quiet
// node (settle()).
//
//   node --import tsx conformance/bench/k8s.bench.ts [--pods 20] [--rounds 3] [--profile]
//
// Prints each round, the median per network and berth/reference (target <= 1.0x). With
// --profile, berth's own share too: the agent runs with --log-level=debug, which logs each
// invocation it serves (plugin, command, container, duration), summed here per pod over the
// chain's plugins; and the CPU time of the cluster's processes during each network's rounds
// (with their reaped children: containerd's include the plugins it ran). The two
// networks run one after the other (berth cannot be taken off a node without deleting its pods),
// so a change in the host's load between them shows in the ratio: compare several runs.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { BUSYBOX, KubeKit, kubectl, missingForKube, sh, WORK } from "../../testing/kube.ts";

const { values } = parseArgs({
  options: {
    pods: { type: "string", default: "20" },
    rounds: { type: "string", default: "3" },
    profile: { type: "boolean", default: false },
  },
});
const PODS = Number(values.pods);
const ROUNDS = Number(values.rounds);
const NS = "bench";

interface PodList {
  items: { status: { phase?: string; podIP?: string } }[];
}

function podsDoc(round: number): string {
  const items = Array.from({ length: PODS }, (_, i) => ({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: `p${round}-${i}`, namespace: NS, labels: { bench: "k8s" } },
    spec: {
      terminationGracePeriodSeconds: 0,
      enableServiceLinks: false,
      containers: [{ name: "main", image: BUSYBOX, imagePullPolicy: "Never", command: ["sleep", "3600"] }],
    },
  }));
  return JSON.stringify({ apiVersion: "v1", kind: "List", items });
}

/** Seconds from apply to every pod Running with an address. */
async function round(r: number): Promise<number> {
  const t0 = performance.now();
  await kubectl(["apply", "-f", "-"], podsDoc(r));
  for (;;) {
    const list = JSON.parse(await kubectl(["-n", NS, "get", "pods", "-l", "bench=k8s", "-o", "json"])) as PodList;
    const up = list.items.filter((p) => p.status.phase === "Running" && p.status.podIP).length;
    if (up === PODS) break;
    if (performance.now() - t0 > 300_000) throw new Error(`only ${up}/${PODS} pods Running after 300 s`);
    await new Promise((res) => setTimeout(res, 100));
  }
  const s = (performance.now() - t0) / 1000;
  await kubectl(["-n", NS, "delete", "pods", "-l", "bench=k8s", "--wait=true", "--timeout=300s"], undefined, 310_000);
  await settle();
  return s;
}

/**
 * Waits until kubelet has garbage-collected the deleted pods' sandboxes (its GC runs once a
 * minute and stops and removes them, CNI DEL included), so that every round starts on a quiet
 * node, as the first one does, instead of overlapping the last round's clean-up at a varying
 * point of kubelet's GC cycle.
 */
async function settle(): Promise<void> {
  const crictl = join(WORK, "bin", "crictl");
  const endpoint = `unix://${join(WORK, "containerd", "containerd.sock")}`;
  const t0 = performance.now();
  for (;;) {
    const ids = await sh(crictl, ["--runtime-endpoint", endpoint, "pods", "--namespace", NS, "-q"]);
    if (ids.trim() === "") return;
    if (performance.now() - t0 > 180_000) throw new Error(`sandboxes of namespace ${NS} still there after 180 s:\n${ids}`);
    await new Promise((res) => setTimeout(res, 1000));
  }
}

/** berth's time per pod from the agent's log: each served invocation, and the chain's sum per container. */
async function agentProfile(): Promise<string> {
  const log = await kubectl(["-n", "berth-system", "logs", "ds/berth-network", "-c", "agent"]).catch((e) => (e as Error).message);
  const served = /served pid \d+ (\S+) (\S+) (\S+) \S*: exit (\d+) in ([\d.]+) ms/;
  const byStep = new Map<string, number[]>();
  const perPod = new Map<string, number>();
  for (const line of log.split("\n")) {
    const m = served.exec(line);
    if (!m) continue;
    const [, type, command, cid, , ms] = m;
    const key = `${command} ${type}`;
    byStep.set(key, [...(byStep.get(key) ?? []), Number(ms)]);
    if (command === "ADD" || command === "DEL")
      perPod.set(`${command} ${cid}`, (perPod.get(`${command} ${cid}`) ?? 0) + Number(ms));
  }
  const q = (xs: number[], f: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * f))]!;
  const lines = [...byStep.entries()]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(
      ([k, xs]) =>
        `  ${k.padEnd(24)} n=${String(xs.length).padStart(3)}  p50 ${q(xs, 0.5).toFixed(1)} ms  p90 ${q(xs, 0.9).toFixed(1)} ms`,
    );
  for (const command of ["ADD", "DEL"]) {
    const xs = [...perPod.entries()].filter(([k]) => k.startsWith(`${command} `)).map(([, v]) => v);
    if (xs.length > 0)
      lines.push(
        `  ${`${command} whole chain`.padEnd(24)} n=${String(xs.length).padStart(3)}  p50 ${q(xs, 0.5).toFixed(1)} ms  p90 ${q(xs, 0.9).toFixed(1)} ms`,
      );
  }
  return lines.length > 0 ? lines.join("\n") : `  (no served invocations in the agent's log)\n${log.slice(-1000)}`;
}

/** Processes of the cluster by what they are (their command line, NUL-separated). */
const GROUPS: [string, RegExp][] = [
  ["kubelet", /\/kubelet\0/],
  ["containerd (+ CNI plugins)", /^containerd\0--config/],
  ["containerd shims", /containerd-shim/],
  ["kube-apiserver", /kube-apiserver\0/],
  ["etcd", /^etcd\0/],
  ["kube-controller-manager, scheduler", /kube-(controller-manager|scheduler)\0/],
  ["berth agent", /berth\.cjs\0agent\0/],
  ["berth csi", /berth\.cjs\0csi\0/],
  ["csi sidecars", /csi-provisioner|csi-node-driver-registrar/],
];
const TICK = 100; // USER_HZ

/**
 * CPU seconds (user + system, own and reaped children's) per group, and the machine's busy
 * seconds. Processes outside the groups are counted by command name ("other: <comm>", own time
 * only), so that busy time no group explains can be traced.
 */
function cpuNow(): Map<string, number> {
  const out = new Map<string, number>(GROUPS.map(([g]) => [g, 0]));
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "latin1");
      const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // fields 14-17 of stat: utime stime cutime cstime (f[0] is field 3)
      const own = (Number(f[11]) + Number(f[12])) / TICK;
      const group = GROUPS.find(([, re]) => re.test(cmd))?.[0];
      if (group) out.set(group, out.get(group)! + own + (Number(f[13]) + Number(f[14])) / TICK);
      else {
        const key = `other: ${stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"))}`;
        out.set(key, (out.get(key) ?? 0) + own);
      }
    } catch {
      // exited meanwhile
    }
  }
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  out.set("whole machine (all jobs)", (cpu.reduce((a, b) => a + b, 0) - cpu[3]! - cpu[4]!) / TICK);
  return out;
}

function cpuDelta(a: Map<string, number>, b: Map<string, number>, rounds: number): Map<string, number> {
  return new Map([...b.entries()].map(([k, v]) => [k, (v - (a.get(k) ?? 0)) / rounds]));
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  const missing = missingForKube();
  if (missing.length > 0) throw new Error(`Kubernetes kit not built (scripts/setup.sh kube): ${missing.join(", ")}`);
  const kit = new KubeKit({ agentLogLevel: values.profile ? "debug" : undefined });
  const results: Record<string, number[]> = { reference: [], berth: [] };
  let profile = "";
  const cpu: Record<string, Map<string, number>> = {};
  try {
    await kit.start();
    await kubectl(["create", "namespace", NS]);
    let before = cpuNow();
    for (let r = 0; r < ROUNDS; r++) {
      const s = await round(r);
      results.reference!.push(s);
      console.log(`reference bridge  round ${r + 1}: ${PODS} pods Running in ${s.toFixed(2)} s`);
    }
    cpu.reference = cpuDelta(before, cpuNow(), ROUNDS);
    kit.removeKitNetwork();
    await kit.deployBerth();
    before = cpuNow();
    for (let r = 0; r < ROUNDS; r++) {
      const s = await round(ROUNDS + r);
      results.berth!.push(s);
      console.log(`berth             round ${r + 1}: ${PODS} pods Running in ${s.toFixed(2)} s`);
    }
    cpu.berth = cpuDelta(before, cpuNow(), ROUNDS);
    if (values.profile) profile = await agentProfile();
  } finally {
    await kit.stop();
  }
  const ref = median(results.reference!);
  const berth = median(results.berth!);
  console.log(`\n${PODS} pods, apply -> all Running with addresses, median of ${ROUNDS}:`);
  console.log(`  reference bridge + host-local  ${ref.toFixed(2)} s`);
  console.log(`  berth (overlay, fast path)     ${berth.toFixed(2)} s`);
  console.log(`  berth / reference              ${(berth / ref).toFixed(2)}x`);
  if (profile) console.log(`\nberth's agent, invocations served (fast path):\n${profile}`);
  if (values.profile && cpu.reference && cpu.berth) {
    console.log("\nCPU seconds per round (apply, Running, delete), reference / berth:");
    const row = (k: string, r: number, b: number) =>
      console.log(`  ${k.padEnd(36)} ${r.toFixed(2).padStart(7)} ${b.toFixed(2).padStart(7)}`);
    for (const [k, v] of cpu.berth) if (!k.startsWith("other: ")) row(k, cpu.reference.get(k) ?? 0, v);
    // The other processes that used most on either network.
    const { reference, berth } = cpu;
    const others = new Set([...reference.keys(), ...berth.keys()].filter((k) => k.startsWith("other: ")));
    const top = [...others]
      .map((k) => [k, reference.get(k) ?? 0, berth.get(k) ?? 0] as const)
      .sort((a, b) => Math.max(b[1], b[2]) - Math.max(a[1], a[2]))
      .slice(0, 8);
    for (const [k, r, b] of top) row(k, r, b);
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
