// A child process for the store's multi-process tests (spawned with `node --import tsx`).
//   allocate <dataDir> <worker> <count>: <count> allocations as distinct containers; prints the addresses as JSON.
//   churn <dataDir> <worker>: allocates and releases forever (the parent SIGKILLs it mid-transaction).
//   hold <dataDir> <ms>: creates the database file as plain SQLite would (rollback journal, no
//     schema), holds its write lock for <ms> milliseconds (says "held" on IPC once it has it).
import { join } from "node:path";
import Database from "better-sqlite3";
import { parseHostLocalConfig } from "../cni/ipam/ranges.ts";
import { DATABASE_FILE, LeaseStore } from "../cni/ipam/store.ts";

const [mode, dataDir, worker, count, startAt] = process.argv.slice(2);
const { rangeSets } = parseHostLocalConfig({
  ranges: [[{ subnet: "10.44.0.0/22" }], [{ subnet: "fd44::/118" }]],
});
const network = "concurrency";

if (mode === "hold") {
  const db = new Database(join(dataDir!, DATABASE_FILE));
  db.exec("BEGIN IMMEDIATE");
  process.send?.("held");
  await new Promise((r) => setTimeout(r, Number(worker)));
  db.exec("COMMIT");
  db.close();
  process.disconnect?.();
} else if (mode === "allocate") {
  const store = LeaseStore.open(dataDir!);
  // Start barrier: all workers begin allocating at the same instant, so they truly contend.
  if (startAt) await new Promise((r) => setTimeout(r, Math.max(0, Number(startAt) - Date.now())));

  const addresses: string[] = [];
  for (let i = 0; i < Number(count); i++) {
    const leases = store.allocate({ network, containerId: `w${worker}-c${i}`, ifname: "eth0" }, rangeSets.slice(0, 1));
    addresses.push(leases[0]!.address);
  }
  process.stdout.write(JSON.stringify(addresses));
  store.close();
} else if (mode === "churn") {
  const store = LeaseStore.open(dataDir!);
  process.send?.("ready");
  for (let i = 0; ; i++) {
    const owner = { network, containerId: `w${worker}-c${i % 40}`, ifname: "eth0" };
    if (store.leasesOf(owner).length > 0) store.release(owner);
    else store.allocate(owner, rangeSets);
  }
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
