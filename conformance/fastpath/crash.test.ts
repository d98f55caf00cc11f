// The agent dies (SIGKILL) in the middle of 100 parallel ADDs. A runtime must only ever see a
// result or a spec error: calls the agent had taken get code 11 (try again), calls that found
// no agent run on the cold path. After the DELs a runtime would send, and a GC, nothing is
// leaked (host veths, leases) and no address was handed out twice.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { ipJson, testPrefix } from "../../testing/kernel.ts";
import { asCniError, type CniOutcome, describeOutcome, execPlugin } from "../../testing/plugin-exec.ts";
import { Sandbox } from "../../testing/sandbox.ts";
import { type NetworkShape, networkConfig } from "../lib/cni-netconf.ts";
import { addressOf, attachmentView } from "../lib/cni-result.ts";
import { ServerProcess } from "./server-process.ts";

const CNI = resolve(import.meta.dirname, "../../build/cni");
const built = existsSync(join(CNI, "berth-bridge")) && existsSync(resolve(CNI, "../cni-node/berth-bridge.cjs"));
const N = 100;
const LOST = "berth agent connection lost during the request; try again";

describe.skipIf(!built)("agent killed during 100 parallel ADDs", () => {
  const dir = mkdtempSync(`/tmp/${testPrefix()}-`);
  const socketPath = join(dir, "cni.sock");
  const sandbox = new Sandbox();
  const servers: ServerProcess[] = [];

  afterAll(async () => {
    for (const s of servers) await s.kill();
    sandbox.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it("every ADD succeeds or fails with a spec error; DEL + GC leave nothing; no duplicate address", {
    timeout: 180_000,
  }, async () => {
    const { subnet, base } = sandbox.allocateSubnet(24);
    // Exactly N allocatable addresses: a leaked lease shows up as exhaustion below.
    const net: NetworkShape = { name: `${sandbox.prefix}-crash`, subnet, base, rangeStart: 2, rangeEnd: 1 + N };
    const target = { cniPath: CNI, type: "berth-bridge", ipam: "berth-host-local" };
    const conf = networkConfig(target, sandbox, net, "1.0.0");
    const netns = Array.from({ length: N }, (_, i) => sandbox.createNetns(`k${i}`));
    const cid = (i: number) => `${sandbox.prefix}-c${i}`;
    const run = (command: string, i: number, type = "berth-bridge", cidOf = cid) =>
      execPlugin({
        cniPath: CNI,
        type,
        env: {
          CNI_COMMAND: command,
          CNI_CONTAINERID: cidOf(i),
          CNI_NETNS: netns[i]!.path,
          CNI_IFNAME: "eth0",
          BERTH_CNI_SOCKET: socketPath,
        },
        stdin: conf,
        timeoutMs: 60_000,
      });

    const first = await ServerProcess.start(socketPath);
    servers.push(first);
    // The first 5 ADDs are answered. Then this test takes the lease database's write lock: the
    // agent's next ADDs stop in IPAM (the wait holds its only thread), their veths under way,
    // and launchers that connect meanwhile have sent their requests. 55 more ADDs start,
    // and the agent is killed under them; the lock goes, and the other 40 start, finding only a
    // stale socket file. (Killing it once it had answered a few, racing the ADDs, could find
    // them all answered: none in flight, in 1 of ~10 runs.)
    const EARLY = 60;
    const ANSWERED = 5;
    const answered = await Promise.all(Array.from({ length: ANSWERED }, (_, i) => run("ADD", i)));
    const lock = new Database(join(sandbox.dataDir, "ipam.db"));
    let early: Promise<CniOutcome>[];
    try {
      lock.exec("BEGIN IMMEDIATE");
      const held = Array.from({ length: EARLY - ANSWERED }, (_, k) => run("ADD", ANSWERED + k));
      await new Promise((r) => setTimeout(r, 500)); // connected, requests sent
      await first.kill();
      early = [...answered.map((o) => Promise.resolve(o)), ...held];
    } finally {
      if (lock.inTransaction) lock.exec("ROLLBACK");
      lock.close();
    }
    const late = Array.from({ length: N - EARLY }, (_, i) => run("ADD", EARLY + i));
    const adds = await Promise.all([...early, ...late]);
    const servedBeforeKill = first.served();
    expect(first.running).toBe(false);

    const ok: number[] = [];
    const lost: number[] = [];
    for (const [i, o] of adds.entries()) {
      expect(o.signal, describeOutcome(o)).toBeNull();
      if (o.exitCode === 0) {
        ok.push(i);
        continue;
      }
      expect(o.exitCode, describeOutcome(o)).toBe(1);
      const err = asCniError(o.json);
      expect(err, `ADD ${i} printed no CNI error: ${describeOutcome(o)}`).toBeDefined();
      expect(err!.code, describeOutcome(o)).toBe(11);
      expect(err!.msg).toBe(LOST);
      expect(err!.cniVersion).toBe("1.0.0");
      lost.push(i);
    }
    console.log(
      `crash: ${servedBeforeKill} answered by the agent, ${ok.length} succeeded (fast or cold), ${lost.length} lost with code 11`,
    );
    expect(lost.length).toBeGreaterThan(0);
    // Every late ADD ran on the cold path and succeeded.
    expect(ok.filter((i) => i >= EARLY)).toHaveLength(N - EARLY);
    expect(ok.length).toBeGreaterThan(N - EARLY);
    expect(ok.length + lost.length).toBe(N);

    // Successful results: distinct addresses, and each is what the kernel holds on that eth0.
    const given = ok.map((i) => addressOf(attachmentView(adds[i]!.json).ips[0]?.address ?? ""));
    expect(new Set(given).size).toBe(ok.length);
    for (const [k, i] of ok.entries()) {
      const addrs = ipJson(["addr", "show", "dev", "eth0"], netns[i]!.name).flatMap((l) => l.addr_info ?? []);
      expect(addrs.map((a: { local: string }) => a.local)).toContain(given[k]);
    }
    // Lost calls may have finished in the kernel: still no address on two interfaces.
    const inKernel = netns.flatMap((ns) => {
      const links = ipJson(["addr", "show"], ns.name).filter((l) => l.ifname === "eth0");
      return links.flatMap((l) =>
        (l.addr_info ?? []).filter((a: { family: string }) => a.family === "inet").map((a: { local: string }) => a.local),
      );
    });
    expect(new Set(inKernel).size).toBe(inKernel.length);

    // The agent comes back on the same path (stale socket file replaced); the runtime DELs everything.
    const second = await ServerProcess.start(socketPath);
    servers.push(second);
    const dels = await Promise.all(Array.from({ length: N }, (_, i) => run("DEL", i)));
    for (const o of dels) expect(o.exitCode, describeOutcome(o)).toBe(0);
    const gc = await execPlugin({
      cniPath: CNI,
      type: "berth-bridge",
      env: { CNI_COMMAND: "GC", BERTH_CNI_SOCKET: socketPath },
      stdin: { ...networkConfig(target, sandbox, net, "1.1.0"), "cni.dev/valid-attachments": [] },
    });
    expect(gc.exitCode, describeOutcome(gc)).toBe(0);

    expect(ipJson(["link", "show", "master", sandbox.bridgeName])).toEqual([]);
    // Links retired by DEL are deleted in the background: wait for that, then nothing may remain.
    const linksLeft = () => netns.flatMap((ns) => ipJson(["link", "show"], ns.name).map((l) => `${ns.name}:${l.ifname}`));
    for (let t = 0; t < 30 && linksLeft().some((l) => !l.endsWith(":lo")); t++) await new Promise((r) => setTimeout(r, 100));
    for (const ns of netns) expect(ipJson(["link", "show"], ns.name).map((l) => l.ifname)).toEqual(["lo"]);

    // Every one of the N addresses is free again: N IPAM ADDs for new containers all succeed.
    const fresh = (i: number) => `${sandbox.prefix}-f${i}`;
    const ipamAdds: CniOutcome[] = await Promise.all(
      Array.from({ length: N }, (_, i) => run("ADD", i, "berth-host-local", fresh)),
    );
    for (const o of ipamAdds) expect(o.exitCode, describeOutcome(o)).toBe(0);
    const again = ipamAdds.map((o) => addressOf(attachmentView(o.json).ips[0]?.address ?? ""));
    expect(new Set(again).size).toBe(N);
    const ipamDels = await Promise.all(Array.from({ length: N }, (_, i) => run("DEL", i, "berth-host-local", fresh)));
    for (const o of ipamDels) expect(o.exitCode, describeOutcome(o)).toBe(0);
    await second.stop();
  });
});
