// A child process for the deferred-sync test, run under strace (spawned with `node --import tsx`).
//   <dataDir> deferred|full: one grouped allocation with a sink; prints what the parent checks as JSON.
import { parseHostLocalConfig } from "../cni/ipam/ranges.ts";
import { LeaseStore } from "../cni/ipam/store.ts";

const [dataDir, mode] = process.argv.slice(2);
const { rangeSets } = parseHostLocalConfig({ ranges: [[{ subnet: "10.45.0.0/29" }]] });
const store = LeaseStore.open(dataDir!, { deferSyncs: mode === "deferred" });
store
  .grouped(() => store.allocate({ network: "d", containerId: "warm", ifname: "eth0" }, rangeSets))
  .then(async () => {
    // strace marks: everything between the two writes belongs to the allocation under test.
    process.stderr.write("MARK begin\n");
    const sink: Promise<void>[] = [];
    const leases = await store.grouped(
      () => store.allocate({ network: "d", containerId: "c1", ifname: "eth0" }, rangeSets),
      sink,
    );
    const pendingAtResult = sink.length;
    await Promise.all(sink);
    process.stderr.write("MARK end\n");
    process.stdout.write(
      `${JSON.stringify({ address: leases[0]!.address, pendingAtResult, synchronous: store.synchronousMode() })}\n`,
    );
    store.close();
  });
