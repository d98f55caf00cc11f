// Kubernetes pod start-up benchmark (not a test): on one live cluster (../shared/k8s, v1.20.2,
// containerd 1.6, one node), the time from `kubectl apply` of N pods (busybox, one container
// each) to all of them Running with an address, first on the reference bridge plugin + host-local
// (v1.3.0, the kit's own network), then on berth deployed by `kubectl apply -f deploy/kubernetes/`
// (the overlay on the node's podCIDR, the agent's fast path). Each round deletes the pods and
// waits for them to be gone before the next.
//
//   node --import tsx conformance/bench/k8s.bench.ts [--pods 20] [--rounds 3]
//
// Prints each round, the median per network and berth/reference (target <= 1.0x). The two
// networks run one after the other (berth cannot be taken off a node without deleting its pods),
// so a change in the host's load between them shows in the ratio: compare several runs.
import { parseArgs } from "node:util";
import { BUSYBOX, KubeKit, kubectl, missingForKube } from "../../testing/kube.ts";

const { values } = parseArgs({
  options: { pods: { type: "string", default: "20" }, rounds: { type: "string", default: "3" } },
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
  return s;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  const missing = missingForKube();
  if (missing.length > 0) throw new Error(`Kubernetes kit not built (scripts/setup.sh kube): ${missing.join(", ")}`);
  const kit = new KubeKit();
  const results: Record<string, number[]> = { reference: [], berth: [] };
  try {
    await kit.start();
    await kubectl(["create", "namespace", NS]);
    for (let r = 0; r < ROUNDS; r++) {
      const s = await round(r);
      results.reference!.push(s);
      console.log(`reference bridge  round ${r + 1}: ${PODS} pods Running in ${s.toFixed(2)} s`);
    }
    kit.removeKitNetwork();
    await kit.deployBerth();
    for (let r = 0; r < ROUNDS; r++) {
      const s = await round(ROUNDS + r);
      results.berth!.push(s);
      console.log(`berth             round ${r + 1}: ${PODS} pods Running in ${s.toFixed(2)} s`);
    }
  } finally {
    await kit.stop();
  }
  const ref = median(results.reference!);
  const berth = median(results.berth!);
  console.log(`\n${PODS} pods, apply -> all Running with addresses, median of ${ROUNDS}:`);
  console.log(`  reference bridge + host-local  ${ref.toFixed(2)} s`);
  console.log(`  berth (overlay, fast path)     ${berth.toFixed(2)} s`);
  console.log(`  berth / reference              ${(berth / ref).toFixed(2)}x`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
