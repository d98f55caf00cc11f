// GC as libcni's GCNetworkList drives it (what `cnitool gc NET NETNS` runs, with no
// arguments): DEL, in reverse list order, for every attachment of the network libcni has
// cached and the runtime did not name as valid; then GC to every plugin of the list with the
// plugin's config plus name and cniVersion, and, when the runtime named no valid attachment,
// no "cni.dev/valid-attachments" key at all: every attachment left is garbage. With a list
// libcni sends the key and its legacy alias "cni.dev/attachments" (cni#1101); a runtime built
// on the 1.1.0 tag sends the alias alone. Here an attachment whose cache entry was lost (so
// only GC can find it) must go too. Through the executables, cold and through the agent;
// read back from the kernel (veths, nftables elements, IFBs) and the lease database.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ipJson, sh, testPrefix } from "../../testing/kernel.ts";
import { type CniOutcome, describeOutcome, execPlugin } from "../../testing/plugin-exec.ts";
import { Sandbox } from "../../testing/sandbox.ts";
import { ServerProcess } from "../fastpath/server-process.ts";

const CNI = resolve(import.meta.dirname, "../../build/cni");
const PLUGINS = ["berth-bridge", "berth-portmap", "berth-bandwidth"];
const built = PLUGINS.every((p) => existsSync(join(CNI, p))) && existsSync(join(CNI, "../cni-node/berth-bridge.cjs"));
if (!built) console.warn(`SKIPPED: GC as libcni drives it — berth's plugins are not built in ${CNI}`);

const VERSION = "1.1.0";
type Path = "cold" | "fast";
type Json = Record<string, unknown>;

/** What libcni keeps per attachment (/var/lib/cni/results/<net>-<cid>-<if>). */
interface Cached {
  containerID: string;
  ifname: string;
  netns: string;
  capabilityArgs: Json;
  result: Json;
}

describe.skipIf(!built)("GC as libcni drives it", () => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-gc-`));
  const socketPath = join(dir, "cni.sock");
  const table = testPrefix();
  let server: ServerProcess;
  let sandbox: Sandbox;

  beforeAll(async () => {
    server = await ServerProcess.start(socketPath);
    sandbox = new Sandbox();
  });

  afterAll(async () => {
    await server?.stop();
    for (const l of ipJson<{ ifname: string }>(["link", "show"])) {
      if (l.ifname.startsWith(table)) sh("ip", ["link", "del", l.ifname]);
    }
    try {
      sh("nft", ["delete", "table", "inet", table]);
    } catch {
      // never made
    }
    sandbox?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  /** One network per test: its own name, subnet and plugins. */
  function network(label: string) {
    const { subnet } = sandbox.allocateSubnet(24);
    const name = `${sandbox.prefix}-${label}`;
    const plugins: Json[] = [
      {
        type: "berth-bridge",
        bridge: sandbox.bridgeName,
        isGateway: true,
        ipam: { type: "berth-host-local", dataDir: sandbox.dataDir, ranges: [[{ subnet }]] },
      },
      { type: "berth-portmap", capabilities: { portMappings: true }, nftTable: table },
      { type: "berth-bandwidth", capabilities: { bandwidth: true }, ifbPrefix: table },
    ];
    return { name, plugins };
  }
  type Net = ReturnType<typeof network>;

  function pluginConfig(net: Net, p: Json, capabilityArgs: Json, prevResult?: unknown): Json {
    const runtimeConfig: Json = {};
    for (const cap of Object.keys((p.capabilities as Json | undefined) ?? {})) {
      if (capabilityArgs[cap] !== undefined) runtimeConfig[cap] = capabilityArgs[cap];
    }
    return {
      ...p,
      name: net.name,
      cniVersion: VERSION,
      ...(Object.keys(runtimeConfig).length ? { runtimeConfig } : {}),
      ...(prevResult !== undefined ? { prevResult } : {}),
    };
  }

  /** One plugin call with libcni's environment (every CNI_* variable set, empty where unused). */
  async function call(path: Path, command: string, stdin: Json, att?: { cid: string; netns: string }): Promise<CniOutcome> {
    const before = server.served();
    const o = await execPlugin({
      cniPath: CNI,
      type: stdin.type as string,
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: att?.cid ?? "",
        CNI_NETNS: att?.netns ?? "",
        CNI_IFNAME: att ? "eth0" : "",
        CNI_ARGS: "",
        BERTH_CNI_SOCKET: path === "fast" ? socketPath : "off",
      },
      stdin,
    });
    expect(o.exitCode, `${command} ${stdin.type} (${path}): ${describeOutcome(o)}`).toBe(0);
    expect(server.served() - before, `${command} ${stdin.type}: calls the agent served`).toBe(path === "fast" ? 1 : 0);
    return o;
  }

  async function addList(path: Path, net: Net, cid: string, label: string): Promise<Cached> {
    const netns = sandbox.createNetns(label).path;
    const hostPort = 20_000 + Math.floor(Math.random() * 20_000);
    const capabilityArgs: Json = {
      portMappings: [{ hostPort, containerPort: 80, protocol: "tcp" }],
      bandwidth: { ingressRate: 8_000_000, ingressBurst: 80_000, egressRate: 8_000_000, egressBurst: 80_000 },
    };
    let prev: unknown;
    for (const p of net.plugins) {
      prev = (await call(path, "ADD", pluginConfig(net, p, capabilityArgs, prev), { cid, netns })).json;
    }
    return { containerID: cid, ifname: "eth0", netns, capabilityArgs, result: prev as Json };
  }

  /**
   * libcni's GCNetworkList: DEL for every cached attachment not in `valid`, then GC to every
   * plugin; `inject` is what it adds to each plugin's config besides name and cniVersion.
   */
  async function gcNetworkList(path: Path, net: Net, cache: Cached[], valid: Cached[], inject: Json): Promise<void> {
    const keep = new Set(valid.map((a) => `${a.containerID}/${a.ifname}`));
    for (const a of cache) {
      if (keep.has(`${a.containerID}/${a.ifname}`)) continue;
      for (const p of [...net.plugins].reverse()) {
        await call(path, "DEL", pluginConfig(net, p, a.capabilityArgs, a.result), { cid: a.containerID, netns: a.netns });
      }
    }
    for (const p of net.plugins) {
      const o = await call(path, "GC", { ...p, name: net.name, cniVersion: VERSION, ...inject });
      expect(o.stdout, `GC ${p.type} prints nothing`).toBe("");
    }
  }

  const leases = (net: Net): string[] => {
    const file = join(sandbox.dataDir, "ipam.db");
    if (!existsSync(file)) return [];
    const db = new Database(file, { readonly: true, fileMustExist: true });
    try {
      return (
        db.prepare("SELECT container_id FROM leases WHERE network = ? ORDER BY container_id").all(net.name) as {
          container_id: string;
        }[]
      ).map((r) => r.container_id);
    } finally {
      db.close();
    }
  };
  const hostVeth = (a: Cached) =>
    (a.result.interfaces as { name: string; sandbox?: string }[]).find((i) => !i.sandbox && i.name !== sandbox.bridgeName)!.name;
  const podIp = (a: Cached) => (a.result.ips as { address: string }[])[0]!.address.split("/")[0]!;
  const links = () => ipJson<{ ifname: string }>(["link", "show"]).map((l) => l.ifname);
  const tableText = () => sh("nft", ["list", "table", "inet", table]);
  /** Whether anything of the attachment is left: host veth, lease, port mapping, IFB count aside. */
  function leftOf(net: Net, a: Cached): string[] {
    const left: string[] = [];
    if (links().includes(hostVeth(a))) left.push("host veth");
    if (leases(net).includes(a.containerID)) left.push("lease");
    if (new RegExp(`: ${podIp(a).replace(/\./g, "\\.")} \\. 80\\b`).test(tableText())) left.push("port mapping");
    return left;
  }
  const ifbCount = () => links().filter((l) => l.startsWith(table)).length;

  for (const path of ["cold", "fast"] as const) {
    it(`with no valid attachment (cnitool gc): cached ones get DEL, a lost one goes by GC (${path} path)`, {
      timeout: 90_000,
    }, async () => {
      const net = network(`n${path[0]}`);
      const a = await addList(path, net, `${sandbox.prefix}-${path}-a`, `${path[0]}a`);
      const b = await addList(path, net, `${sandbox.prefix}-${path}-b`, `${path[0]}b`);
      // Its cache entry is gone (a wiped /var/lib/cni): libcni cannot DEL it, only GC sees it.
      const lost = await addList(path, net, `${sandbox.prefix}-${path}-l`, `${path[0]}l`);
      expect(ifbCount()).toBe(3);
      for (const x of [a, b, lost]) expect(leftOf(net, x)).toEqual(["host veth", "lease", "port mapping"]);

      await gcNetworkList(path, net, [a, b], [], {});

      for (const x of [a, b, lost]) expect(leftOf(net, x), x.containerID).toEqual([]);
      expect(ifbCount()).toBe(0);
      expect(leases(net)).toEqual([]);
    });

    it(`a runtime's list as null, and the legacy key alone, are read as libcni means them (${path} path)`, {
      timeout: 90_000,
    }, async () => {
      const net = network(`m${path[0]}`);
      const keep = await addList(path, net, `${sandbox.prefix}-${path}-k`, `${path[0]}k`);
      const lost = await addList(path, net, `${sandbox.prefix}-${path}-x`, `${path[0]}x`);
      // A 1.1.0-tag runtime naming `keep` under the old key only: keep stays, lost goes.
      await gcNetworkList(path, net, [], [keep], { "cni.dev/attachments": [{ containerID: keep.containerID, ifname: "eth0" }] });
      expect(leftOf(net, keep)).toEqual(["host veth", "lease", "port mapping"]);
      expect(leftOf(net, lost)).toEqual([]);
      expect(ifbCount()).toBe(1);
      // libcni with an argument whose list is nil marshals both keys as null: nothing is valid.
      await gcNetworkList(path, net, [keep], [], { "cni.dev/valid-attachments": null, "cni.dev/attachments": null });
      expect(leftOf(net, keep)).toEqual([]);
      expect(ifbCount()).toBe(0);
      expect(leases(net)).toEqual([]);
    });
  }
});
