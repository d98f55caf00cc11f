// Allocation cost as the pool fills: allocate+release of one attachment against a store with 0
// and with 2,000 held leases, including the case the round-robin walk finds hardest (the
// cursor wraps onto a run of 2,000 leased addresses). Every operation is a real fsync'd
// transaction, as in production.
//
//   node --import tsx cni/ipam/bench.ts [iterations]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseHostLocalConfig } from "./ranges.ts";
import { type LeaseOwner, LeaseStore } from "./store.ts";

const iterations = Number(process.argv[2] ?? 300);
const { rangeSets } = parseHostLocalConfig({ ranges: [[{ subnet: "10.50.0.0/20" }]] }); // 4,093 assignable
const network = "bench";
const probe: LeaseOwner = { network, containerId: "probe", ifname: "eth0" };

function measure(store: LeaseStore, label: string): void {
  for (let i = 0; i < 100; i++) {
    store.allocate(probe, rangeSets);
    store.release(probe);
  }
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) {
    store.allocate(probe, rangeSets);
    store.release(probe);
  }
  const wall = Number(process.hrtime.bigint() - t0) / 1000 / iterations;
  const used = process.cpuUsage(cpu0);
  const cpu = (used.user + used.system) / iterations;
  // Wall time is mostly the two fsyncs (disk-bound, noisy); CPU time is the allocator's own cost.
  console.log(
    `${label.padEnd(54)} ${wall.toFixed(0).padStart(6)} µs wall  ${cpu.toFixed(0).padStart(5)} µs CPU  per allocate+release`,
  );
}

const dir = mkdtempSync(join(tmpdir(), "berth-ipam-bench-"));
try {
  const store = LeaseStore.open(dir);
  const holder = (i: number): LeaseOwner => ({ network, containerId: `held-${i}`, ifname: "eth0" });
  measure(store, "0 held");

  for (let i = 0; i < 2000; i++) store.allocate(holder(i), rangeSets);
  measure(store, "2,000 held (free addresses right after the cursor)");

  // Fill the pool, then free everything past the first 2,000: the cursor now sits at the end
  // and every allocation wraps onto the run of 2,000 held addresses at the start.
  for (let i = 2000; ; i++) {
    try {
      store.allocate(holder(i), rangeSets);
    } catch {
      for (let j = 2000; j < i; j++) store.release(holder(j));
      break;
    }
  }
  measure(store, "2,000 held (cursor wraps onto a run of 2,000 leased)");
  const problems = store.verify();
  if (problems.length > 0) throw new Error(`store inconsistent: ${problems.join("; ")}`);
  store.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
