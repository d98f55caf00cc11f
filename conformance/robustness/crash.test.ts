// SIGKILL of the berth-bridge executable at a random moment of ADD or DEL, 36 trials. A killed
// plugin can leave anything half-done: a lease without a veth, a veth without a masquerade
// element, an open SQLite write transaction. What a runtime does next must still work: DEL
// after a killed ADD, ADD again, DEL again after a killed DEL. At the end the lease database
// passes integrity_check, and GC with an empty valid list plus a DEL of every attachment
// leaves no port, veth, lease or masquerade element. The same once more under load: 24 plugin
// processes at once, ADDs and DELs, each killed at a random point, then DEL + GC.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { describeOutcome } from "../../testing/plugin-exec.ts";
import { addressOf, BUILT, CNI_DIR, World } from "./world.ts";

const TRIALS = 36;

/**
 * Where kills land: the real work (IPAM, netlink, nft) is a short stretch after a much longer
 * Node start-up. Each kill is random within [lo, hi]; a kill that found nothing done moves lo up, one
 * that came after the exit moves hi down, so the window closes in on the work itself.
 */
class KillWindow {
  constructor(
    private lo: number,
    private hi: number,
  ) {}
  next(): number {
    return this.lo + Math.random() * (this.hi - this.lo);
  }
  tooEarly(at: number): void {
    this.lo = Math.min(at, this.hi - 2);
  }
  tooLate(at: number): void {
    this.hi = Math.max(at, this.lo + 2);
  }
}

interface Killed {
  /** ms after spawn */
  delay: number;
  /** the process had already exited when the kill was due */
  finished: boolean;
}

/** Spawns the executable and SIGKILLs it (by its own pid) `delay` ms later. */
function runAndKill(env: Record<string, string>, stdin: object, delay: number): Promise<Killed> {
  return new Promise((resolve, reject) => {
    const child = spawn(join(CNI_DIR, "berth-bridge"), [], {
      env: { PATH: process.env.PATH, BERTH_CNI_SOCKET: "off", CNI_PATH: CNI_DIR, ...env },
      stdio: ["pipe", "ignore", "ignore"],
    });
    let exited = false;
    const timer = setTimeout(() => {
      if (!exited) child.kill("SIGKILL");
    }, delay);
    child.on("error", reject);
    child.on("exit", (_code, signal) => {
      exited = true;
      clearTimeout(timer);
      resolve({ delay, finished: signal !== "SIGKILL" });
    });
    child.stdin.on("error", () => {}); // killed before reading stdin
    child.stdin.end(JSON.stringify(stdin));
  });
}

describe.skipIf(!BUILT)("SIGKILL of plugin processes under parallel load", () => {
  const world = new World("crashp");
  afterAll(() => world.cleanup());

  it("24 at once, ADDs and DELs, each killed at a random point; DEL + GC leave nothing", { timeout: 120_000 }, async () => {
    const conf = world.config(100);
    const netns = Array.from({ length: 24 }, (_, i) => world.sandbox.createNetns(`p${i}`));
    const who = (i: number) => ({ containerId: `${world.prefix}-p${i}`, netns: netns[i]!.path });
    const envOf = (command: string, i: number) => ({
      CNI_COMMAND: command,
      CNI_CONTAINERID: who(i).containerId,
      CNI_NETNS: who(i).netns,
      CNI_IFNAME: "eth0",
    });
    // Half the attachments exist (their DELs are killed), half are being made (their ADDs are).
    for (const o of await Promise.all(netns.slice(0, 12).map((_, i) => world.run("ADD", who(i), conf)))) {
      expect(o.exitCode, describeOutcome(o)).toBe(0);
    }
    const killed = await Promise.all(
      netns.map((_, i) => runAndKill(envOf(i < 12 ? "DEL" : "ADD", i), conf, Math.random() * 2000)),
    );
    // 24 cold starts at once on a small machine take a second or two: kills land before, during and after the work.
    const cut = killed.filter((k) => !k.finished).length;
    const leases = world.leases().length;
    console.log(`crash (parallel): ${cut} of 24 killed before they finished; ${leases} leases held after the kills`);
    expect(cut).toBeGreaterThan(0);
    expect(world.integrity()).toEqual(["ok"]);
    const dels = await Promise.all(netns.map((_, i) => world.run("DEL", who(i), conf)));
    expect(dels.filter((d) => d.exitCode !== 0).map(describeOutcome)).toEqual([]);
    const gc = await world.run("GC", { containerId: "" }, { ...conf, "cni.dev/valid-attachments": [] });
    expect(gc.exitCode, describeOutcome(gc)).toBe(0);
    expect(world.bridgePorts()).toEqual([]);
    expect(world.hostVeths()).toEqual([]);
    expect(world.leases()).toEqual([]);
    expect(world.masqueradedAddresses()).toEqual([]);
    expect(netns.filter((ns) => world.linksIn(ns.name).length > 0).map((ns) => ns.name)).toEqual([]);
    expect(world.integrity()).toEqual(["ok"]);
  });
});

describe.skipIf(!BUILT)("SIGKILL during ADD and DEL", () => {
  const world = new World("crash");
  afterAll(() => world.cleanup());

  it(`${TRIALS} kills at random points; DEL/ADD recover; GC + DEL leave nothing`, { timeout: 240_000 }, async () => {
    const conf = world.config(200);
    const netns = Array.from({ length: TRIALS }, (_, i) => world.sandbox.createNetns(`k${i}`));
    const who = (i: number) => ({ containerId: `${world.prefix}-k${i}`, netns: netns[i]!.path });
    const envOf = (command: string, i: number) => ({
      CNI_COMMAND: command,
      CNI_CONTAINERID: who(i).containerId,
      CNI_NETNS: who(i).netns,
      CNI_IFNAME: "eth0",
    });

    // An undisturbed ADD and DEL are timed first: the kill windows start as 0-120% of each.
    const t0 = Date.now();
    const probe = await world.run("ADD", who(0), conf);
    const addMs = Date.now() - t0;
    expect(probe.exitCode, describeOutcome(probe)).toBe(0);
    const t1 = Date.now();
    expect((await world.run("DEL", who(0), conf)).exitCode).toBe(0);
    const delMs = Date.now() - t1;

    const partial: string[] = [];
    const addWindow = new KillWindow(0, addMs * 1.2);
    const delWindow = new KillWindow(0, delMs * 1.2);
    const held = (i: number) =>
      world.leases().filter((l) => l.container_id === who(i).containerId).length + world.linksIn(netns[i]!.name).length;
    for (let i = 0; i < TRIALS; i++) {
      if (i % 2 === 0) {
        const k = await runAndKill(envOf("ADD", i), conf, addWindow.next());
        const left = held(i); // 0: nothing done yet; 2: lease and eth0
        if (k.finished) addWindow.tooLate(k.delay);
        else if (left === 0) addWindow.tooEarly(k.delay);
        else partial.push(`ADD #${i} at ${k.delay.toFixed(0)} ms left ${left}`);
        const del = await world.run("DEL", who(i), conf);
        expect(del.exitCode, `DEL after killed ADD #${i}: ${describeOutcome(del)}`).toBe(0);
        expect(world.linksIn(netns[i]!.name)).toEqual([]);
      } else {
        const add = await world.run("ADD", who(i), conf);
        expect(add.exitCode, describeOutcome(add)).toBe(0);
        const k = await runAndKill(envOf("DEL", i), conf, delWindow.next());
        const left = held(i);
        if (k.finished || left === 0) delWindow.tooLate(k.delay);
        else if (left === 2) delWindow.tooEarly(k.delay);
        else partial.push(`DEL #${i} at ${k.delay.toFixed(0)} ms left ${left}`);
        const del = await world.run("DEL", who(i), conf);
        expect(del.exitCode, `DEL after killed DEL #${i}: ${describeOutcome(del)}`).toBe(0);
      }
      // The attachment is usable again: ADD gets an address that the netns really holds.
      const again = await world.run("ADD", who(i), conf);
      expect(again.exitCode, `ADD after the kill #${i}: ${describeOutcome(again)}`).toBe(0);
      expect(
        world
          .leases()
          .filter((l) => l.container_id === who(i).containerId)
          .map((l) => l.ip),
      ).toEqual([addressOf(again.json)]);
    }
    // Kills landed mid-work, not only before start-up or after the exit.
    console.log(`crash: ADD ${addMs} ms, DEL ${delMs} ms; half-done states seen: ${partial.length} (${partial.join(", ")})`);
    expect(partial.length).toBeGreaterThan(0);

    expect(world.integrity()).toEqual(["ok"]);
    const live = world.leases();
    expect(live).toHaveLength(TRIALS);
    expect(new Set(live.map((l) => l.ip)).size).toBe(TRIALS);

    // GC with nothing valid, then the DELs a runtime would send anyway.
    const gc = await world.run("GC", { containerId: "" }, { ...conf, "cni.dev/valid-attachments": [] });
    expect(gc.exitCode, describeOutcome(gc)).toBe(0);
    expect(world.hostVeths()).toEqual([]);
    expect(world.leases()).toEqual([]);
    expect(world.masqueradedAddresses()).toEqual([]);
    const dels = await Promise.all(netns.map((_, i) => world.run("DEL", who(i), conf)));
    expect(dels.filter((d) => d.exitCode !== 0).map(describeOutcome)).toEqual([]);
    expect(world.bridgePorts()).toEqual([]);
    expect(world.hostVeths()).toEqual([]);
    expect(world.leases()).toEqual([]);
    expect(world.masqueradedAddresses()).toEqual([]);
    expect(netns.filter((ns) => world.linksIn(ns.name).length > 0).map((ns) => ns.name)).toEqual([]);
    expect(world.integrity()).toEqual(["ok"]);
  });
});
