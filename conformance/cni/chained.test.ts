// The CNI conformance suite's chaining rules against berth's meta plugins: berth-tuning after
// berth-bridge over the whole suite; the full meta chain (portmap → firewall → bandwidth →
// tuning, with port mappings and bridge isolation in a throwaway nftables table) after
// berth-bridge and berth-ptp, on the cold path and through the agent; and a faulty chained
// fixture to prove those rules can fail.
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ipJson, sh, testPrefix } from "../../testing/kernel.ts";
import { ServerProcess } from "../fastpath/server-process.ts";
import type { Verdict } from "./harness.ts";
import { parseSuiteArgs, runSuite } from "./run.ts";

const BERTH_CNI = resolve(import.meta.dirname, "../../build/cni");
const FAULTY_CHAIN = resolve(import.meta.dirname, "fixtures/faulty-chain.mjs");
const META = ["berth-portmap", "berth-firewall", "berth-bandwidth", "berth-tuning"];
const META_NAMES = META.join(" → ");

const built = (exe: string) => existsSync(join(BERTH_CNI, exe));
const berthBuilt = ["berth-bridge", "berth-host-local", ...META].every(built);
if (!berthBuilt) console.warn(`SKIPPED: chained CNI conformance — berth's plugins are not built in ${BERTH_CNI}`);

const suite = (argv: string[]) => runSuite(parseSuiteArgs(["--cni-path", BERTH_CNI, ...argv]), () => {});
const failures = (vs: Verdict[]) => vs.filter((v) => v.status !== "PASS").map((v) => `${v.status} ${v.id}: ${v.why}`);
const byId = (vs: Verdict[]) => Object.fromEntries(vs.map((v) => [v.id, v.status]));

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** A unique nftables table for the meta plugins, removed (both families) after the test. */
function throwawayTable(): string {
  const table = testPrefix();
  cleanups.push(() => {
    for (const family of ["inet", "bridge"]) {
      try {
        sh("nft", ["delete", "table", family, table]);
      } catch {
        // never created, or already gone
      }
    }
  });
  return table;
}

/** Elements left in the table's sets and maps, by set name; empty when no pod remains. */
function tableElements(table: string): Record<string, unknown[]> {
  const doc = JSON.parse(sh("nft", ["-j", "list", "table", "inet", table])) as {
    nftables: { set?: { name: string; elem?: unknown[] }; map?: { name: string; elem?: unknown[] } }[];
  };
  const out: Record<string, unknown[]> = {};
  for (const o of doc.nftables) {
    const s = o.set ?? o.map;
    if (s?.elem?.length) out[s.name] = s.elem;
  }
  return out;
}

/**
 * The meta chain's arguments: TCP and UDP host ports and the firewall policy in `table`, and
 * ingress/egress shaping whose IFB device carries the same prefix (the leak check finds it).
 */
function metaChainArgs(table: string, ingressPolicy: string): string[] {
  const hostPort = 20_000 + Math.floor(Math.random() * 20_000);
  const portMappings = [
    { hostPort, containerPort: 80, protocol: "tcp" },
    { hostPort: hostPort + 1, containerPort: 53, protocol: "udp" },
  ];
  return [
    ...META.flatMap((t) => ["--chain-type", t]),
    "--chain-config",
    `berth-portmap=${JSON.stringify({ nftTable: table, runtimeConfig: { portMappings } })}`,
    "--chain-config",
    `berth-firewall=${JSON.stringify({ nftTable: table, ingressPolicy })}`,
    "--chain-config",
    `berth-bandwidth=${JSON.stringify({ ifbPrefix: table, ingressRate: 8e6, ingressBurst: 8e4, egressRate: 8e6, egressBurst: 8e4 })}`,
  ];
}

/** Points the launchers (BERTH_* reaches every plugin child) at `socket` for one describe block. */
function useAgentSocket(socket: () => string): void {
  const saved = process.env.BERTH_CNI_SOCKET;
  beforeAll(() => {
    process.env.BERTH_CNI_SOCKET = socket();
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.BERTH_CNI_SOCKET;
    else process.env.BERTH_CNI_SOCKET = saved;
  });
}

describe.skipIf(!berthBuilt)("CNI conformance: berth's meta plugins chained (cold path)", () => {
  // "off": every launcher runs Node on its bundle, whether or not an agent listens on this host.
  useAgentSocket(() => "off");

  it("berth-bridge + berth-host-local chained with berth-tuning pass every rule, none skipped", { timeout: 90_000 }, async () => {
    const vs = await suite(["--type", "berth-bridge", "--ipam", "berth-host-local", "--chain-type", "berth-tuning"]);
    expect(failures(vs)).toEqual([]);
    expect(vs.filter((v) => v.id.startsWith("CHAIN-")).length).toBe(5);
    expect(vs.length).toBeGreaterThan(60);
  });

  // Bridge isolation needs a bridge; after ptp the firewall can only accept the pod ("open").
  for (const [main, policy] of [
    ["berth-bridge", "same-bridge"],
    ["berth-ptp", "open"],
  ] as const) {
    it.skipIf(!built(main))(
      `${main} → ${META_NAMES} pass every chaining rule and leave no pod in the table, no IFB behind`,
      { timeout: 60_000 },
      async () => {
        const table = throwawayTable();
        const vs = await suite([
          "--type",
          main,
          "--ipam",
          "berth-host-local",
          ...metaChainArgs(table, policy),
          "--only",
          "^CHAIN-",
        ]);
        expect(failures(vs)).toEqual([]);
        expect(Object.keys(byId(vs)).sort()).toEqual([
          "CHAIN-CHECK",
          "CHAIN-DEL-AGAIN",
          "CHAIN-DEL-REVERSE",
          "CHAIN-GC-KEEPS-VALID",
          "CHAIN-PREVRESULT",
        ]);
        // The chain really ran in this table (CHECK read it), and DEL took every pod element out.
        const left = tableElements(table);
        expect(Object.keys(left).filter((s) => /^(pm|fw_pods)/.test(s))).toEqual([]);
        if (policy === "same-bridge") expect(Object.keys(left)).toContain("fw_isolated");
        // bandwidth's IFB device (named with the table's prefix) went with the DEL.
        expect(ipJson<{ ifname: string }>(["link", "show"]).filter((l) => l.ifname.startsWith(table))).toEqual([]);
      },
    );
  }
});

describe.skipIf(!berthBuilt)("CNI conformance: berth's meta plugins chained on the fast path (agent)", () => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-agent-`));
  let server: ServerProcess | undefined;
  useAgentSocket(() => join(dir, "cni.sock"));
  beforeAll(async () => {
    server = await ServerProcess.start(join(dir, "cni.sock"));
  });
  afterAll(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it(`berth-bridge → ${META_NAMES} pass every chaining rule, all served by the agent`, {
    timeout: 60_000,
  }, async () => {
    const table = throwawayTable();
    const before = server!.served();
    const vs = await suite([
      "--type",
      "berth-bridge",
      "--ipam",
      "berth-host-local",
      ...metaChainArgs(table, "same-bridge"),
      "--only",
      "^CHAIN-",
    ]);
    expect(failures(vs)).toEqual([]);
    expect(vs.length).toBe(5);
    expect(server!.served() - before).toBeGreaterThan(20);
  });
});

describe.skipIf(!berthBuilt)("CNI conformance: the chaining rules catch a faulty chained plugin", () => {
  useAgentSocket(() => "off");

  it("IPs dropped from prevResult, output on GC and a failing repeated DEL each fail their rule", {
    timeout: 60_000,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-chain-`));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const cniPath = join(dir, "cni");
    const markers = join(dir, "markers");
    mkdirSync(cniPath);
    mkdirSync(markers);
    // The launcher takes its plugin type from argv[0], so symlinks named like the originals work.
    for (const exe of ["berth-bridge", "berth-host-local"]) symlinkSync(join(BERTH_CNI, exe), join(cniPath, exe));
    symlinkSync(FAULTY_CHAIN, join(cniPath, "faulty-chain"));
    process.env.BERTH_FAULTY_CHAIN_DIR = markers;
    cleanups.push(() => delete process.env.BERTH_FAULTY_CHAIN_DIR);
    const args = ["--cni-path", cniPath, "--type", "berth-bridge", "--ipam", "berth-host-local", "--chain-type", "faulty-chain"];
    const vs = await runSuite(parseSuiteArgs([...args, "--only", "^CHAIN-"]), () => {});
    expect(byId(vs)).toEqual({
      "CHAIN-PREVRESULT": "FAIL",
      // The main plugin's CHECK rightly refuses the broken final result too.
      "CHAIN-CHECK": "FAIL",
      "CHAIN-GC-KEEPS-VALID": "FAIL",
      "CHAIN-DEL-REVERSE": "PASS",
      "CHAIN-DEL-AGAIN": "FAIL",
    });
    expect(vs.find((v) => v.id === "CHAIN-PREVRESULT")?.why).toMatch(/lost by the chain/);
  });

  it("--chain-config refuses what it cannot apply, naming the argument", () => {
    const base = [
      "--cni-path",
      BERTH_CNI,
      "--type",
      "berth-bridge",
      "--ipam",
      "berth-host-local",
      "--chain-type",
      "berth-tuning",
    ];
    expect(() => parseSuiteArgs([...base, "--chain-config", 'berth-portmap={"snat":false}'])).toThrow(/berth-tuning/);
    expect(() => parseSuiteArgs([...base, "--chain-config", "berth-tuning={mtu"])).toThrow(/not JSON/);
    expect(() => parseSuiteArgs([...base, "--chain-config", "berth-tuning=[1]"])).toThrow(/JSON object/);
    expect(() => parseSuiteArgs([...base, "--chain-config", 'berth-tuning={"prevResult":{}}'])).toThrow(/prevResult/);
    const ok = parseSuiteArgs([...base, "--chain-config", 'berth-tuning={"mtu":1300}']);
    expect(ok.chain).toEqual([{ type: "berth-tuning", config: { mtu: 1300 } }]);
  });
});
