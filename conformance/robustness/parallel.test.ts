// 100 ADDs at once into 100 namespaces through the built executables (cold path: one Node
// process each, all racing on one new bridge, one lease database and one nftables table),
// then 100 DELs at once; three rounds. Every round: 100 distinct addresses that match what
// each netns holds, all reachable, and after the DELs not one port, veth, lease or masquerade
// element left.
import { afterAll, describe, expect, it } from "vitest";
import { ipJson, ping } from "../../testing/kernel.ts";
import { describeOutcome } from "../../testing/plugin-exec.ts";
import { addressOf, BUILT, World } from "./world.ts";

const N = 100;
const ROUNDS = 3;

describe.skipIf(!BUILT)("100 parallel ADDs and DELs (berth-bridge + berth-host-local executables)", () => {
  const world = new World("par");
  afterAll(() => world.cleanup());

  it(`${ROUNDS} rounds: distinct, reachable addresses; nothing left after the DELs`, { timeout: 240_000 }, async () => {
    // Exactly N addresses in the range: a lease leaked by one round makes the next round's ADD fail.
    const conf = world.config(N);
    const netns = Array.from({ length: N }, (_, i) => world.sandbox.createNetns(`p${i}`));
    const gateway = `${world.base}.1`;

    for (let round = 0; round < ROUNDS; round++) {
      const cid = (i: number) => `${world.prefix}-r${round}-c${i}`;
      const adds = await Promise.all(netns.map((ns, i) => world.run("ADD", { containerId: cid(i), netns: ns.path }, conf)));
      const failed = adds.map((o, i) => [i, o] as const).filter(([, o]) => o.exitCode !== 0);
      expect(failed.map(([i, o]) => `#${i}: ${describeOutcome(o)}`)).toEqual([]);

      const addresses = adds.map((o) => addressOf(o.json));
      expect(new Set(addresses).size).toBe(N);
      // Each result is what the kernel holds in that netns.
      netns.forEach((ns, i) => {
        const eth0 = ipJson<{ addr_info: { family: string; local: string }[] }>(["addr", "show", "dev", "eth0"], ns.name)[0]!;
        expect(eth0.addr_info.filter((a) => a.family === "inet").map((a) => a.local)).toEqual([addresses[i]]);
      });
      expect(world.bridgePorts()).toHaveLength(N);
      expect(
        world
          .leases()
          .map((l) => l.ip)
          .sort(),
      ).toEqual([...addresses].sort());
      expect(world.masqueradedAddresses().sort()).toEqual([...addresses].sort());

      // Every container reaches the gateway; ten random pairs reach each other.
      const unreachable = netns.filter((ns) => !ping(ns.name, gateway)).map((ns) => ns.name);
      expect(unreachable).toEqual([]);
      for (let k = 0; k < 10; k++) {
        const a = Math.floor(Math.random() * N);
        const b = (a + 1 + Math.floor(Math.random() * (N - 1))) % N;
        expect(ping(netns[a]!.name, addresses[b]!), `${netns[a]!.name} → ${addresses[b]}`).toBe(true);
      }

      const dels = await Promise.all(netns.map((ns, i) => world.run("DEL", { containerId: cid(i), netns: ns.path }, conf)));
      const delFailed = dels.map((o, i) => [i, o] as const).filter(([, o]) => o.exitCode !== 0 || o.stdout !== "");
      expect(delFailed.map(([i, o]) => `#${i}: ${describeOutcome(o)}`)).toEqual([]);

      expect(world.bridgePorts()).toEqual([]);
      expect(world.hostVeths()).toEqual([]);
      expect(world.leases()).toEqual([]);
      expect(world.masqueradedAddresses()).toEqual([]);
      expect(netns.filter((ns) => world.linksIn(ns.name).length > 0).map((ns) => ns.name)).toEqual([]);
    }
    expect(world.integrity()).toEqual(["ok"]);
  });
});
