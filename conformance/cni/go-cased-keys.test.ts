// containerd's capability arguments, as it sends them: its CNI library (go-cni) marshals
// PortMapping, BandWidth, IPRanges and DNS from Go structs without JSON tags, so the keys
// arrive with Go's field names ({"HostPort":18080,"ContainerPort":8080,...}). The reference
// plugins take them because Go's decoder matches keys case-insensitively. Here a network of
// berth-bridge (+ berth-host-local, capabilities ipRanges and dns) → berth-portmap →
// berth-bandwidth is driven the way libcni drives a list (runtimeConfig injected per declared
// capability, prevResult chained on ADD, the cached result on CHECK and DEL, DEL in reverse),
// through the executables, on the cold path and through the agent; what the plugins made is
// read back from the kernel (addresses, nftables map elements, tc qdiscs, traffic through the
// host port) and from the lease database.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ipJson, sh, testPrefix } from "../../testing/kernel.ts";
import { type CniOutcome, describeOutcome, execPlugin } from "../../testing/plugin-exec.ts";
import { Sandbox } from "../../testing/sandbox.ts";
import { deliveredThrough, killTcpServers } from "../../testing/tcp.ts";
import { ServerProcess } from "../fastpath/server-process.ts";

const CNI = resolve(import.meta.dirname, "../../build/cni");
const PLUGINS = ["berth-bridge", "berth-portmap", "berth-bandwidth"];
const built = PLUGINS.every((p) => existsSync(join(CNI, p))) && existsSync(join(CNI, "../cni-node/berth-bridge.cjs"));
if (!built) console.warn(`SKIPPED: containerd's Go-cased capability arguments — berth's plugins are not built in ${CNI}`);

const VERSION = "1.0.0";
/** go-cni's BandWidth bursts: containerd sets math.MaxUint32 bits for a direction it limits. */
const MAX_U32 = 4294967295;

type Path = "cold" | "fast";
type Json = Record<string, unknown>;

// biome-ignore lint/suspicious/noExplicitAny: tc JSON
function qdiscs(dev: string): any[] {
  return JSON.parse(sh("tc", ["-j", "qdisc", "show", "dev", dev]) || "[]");
}

describe.skipIf(!built)("containerd's Go-cased capability arguments through ADD, CHECK and DEL", () => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-gokeys-`));
  const socketPath = join(dir, "cni.sock");
  const table = testPrefix();
  let server: ServerProcess;
  let sandbox: Sandbox;
  let subnet: string;
  let base: string;
  let network: string;

  beforeAll(async () => {
    server = await ServerProcess.start(socketPath);
    sandbox = new Sandbox();
    ({ subnet, base } = sandbox.allocateSubnet(24));
    network = `${sandbox.prefix}-go`;
  });

  afterAll(async () => {
    killTcpServers();
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

  /** The network list as an administrator writes it for Kubernetes. */
  const plugins = (): Json[] => [
    {
      type: "berth-bridge",
      bridge: sandbox.bridgeName,
      isGateway: true,
      capabilities: { ipRanges: true, dns: true },
      ipam: { type: "berth-host-local", dataDir: sandbox.dataDir },
      // The network's own DNS with Go's field names, as the reference types.DNS decodes them.
      DNS: { Nameservers: ["10.96.0.10"], Search: ["cluster.local"] },
    },
    { type: "berth-portmap", capabilities: { portMappings: true }, nftTable: table },
    { type: "berth-bandwidth", capabilities: { bandwidth: true }, ifbPrefix: table },
  ];

  /** One plugin's stdin as libcni builds it: name, cniVersion, the declared capabilities' arguments, prevResult. */
  function pluginConfig(p: Json, capabilityArgs: Json, prevResult?: unknown): Json {
    const runtimeConfig: Json = {};
    for (const cap of Object.keys((p.capabilities as Json | undefined) ?? {})) {
      if (capabilityArgs[cap] !== undefined) runtimeConfig[cap] = capabilityArgs[cap];
    }
    return {
      ...p,
      name: network,
      cniVersion: VERSION,
      ...(Object.keys(runtimeConfig).length ? { runtimeConfig } : {}),
      ...(prevResult !== undefined ? { prevResult } : {}),
    };
  }

  async function run(path: Path, command: string, cid: string, netns: string, stdin: Json): Promise<CniOutcome> {
    const before = server.served();
    const o = await execPlugin({
      cniPath: CNI,
      type: stdin.type as string,
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: cid,
        CNI_NETNS: netns,
        CNI_IFNAME: "eth0",
        BERTH_CNI_SOCKET: path === "fast" ? socketPath : "off",
      },
      stdin,
    });
    expect(o.exitCode, `${command} ${stdin.type} (${path}): ${describeOutcome(o)}`).toBe(0);
    expect(server.served() - before, `${command} ${stdin.type}: calls the agent served`).toBe(path === "fast" ? 1 : 0);
    return o;
  }

  /** libcni's AddNetworkList: each plugin in order, each result the next one's prevResult. */
  async function addList(path: Path, cid: string, netns: string, args: Json): Promise<Json> {
    let prev: unknown;
    for (const p of plugins()) prev = (await run(path, "ADD", cid, netns, pluginConfig(p, args, prev))).json;
    return prev as Json;
  }

  /** libcni's CheckNetworkList (in order) or DelNetworkList (in reverse), with the cached result. */
  async function eachPlugin(path: Path, command: "CHECK" | "DEL", cid: string, netns: string, args: Json, cached: Json) {
    const list = command === "DEL" ? plugins().reverse() : plugins();
    for (const p of list) await run(path, command, cid, netns, pluginConfig(p, args, cached));
  }

  const leases = (): { ip: string; container_id: string }[] => {
    const file = join(sandbox.dataDir, "ipam.db");
    if (!existsSync(file)) return [];
    const db = new Database(file, { readonly: true, fileMustExist: true });
    try {
      return db.prepare("SELECT ip, container_id FROM leases WHERE network = ?").all(network) as {
        ip: string;
        container_id: string;
      }[];
    } finally {
      db.close();
    }
  };
  /** The bridge result's host end of the pod's veth. */
  const hostVeth = (result: Json) =>
    (result.interfaces as { name: string; sandbox?: string }[]).find((i) => !i.sandbox && i.name !== sandbox.bridgeName)!.name;
  const portMap = () => sh("nft", ["list", "map", "inet", table, "pm4_any"]);
  const ifbs = () => ipJson<{ ifname: string }>(["link", "show"]).filter((l) => l.ifname.startsWith(table));

  for (const path of ["cold", "fast"] as const) {
    it(`hostPort, bandwidth, ipRanges and dns as containerd sends them (${path} path)`, { timeout: 60_000 }, async () => {
      const hostPort = 20_000 + Math.floor(Math.random() * 20_000);
      const cid = `${sandbox.prefix}-${path}1`;
      const ns = sandbox.createNetns(`${path[0]}a`);
      // go-cni's PortMapping, BandWidth, IPRanges and DNS, json.Marshal'd without tags.
      const args: Json = {
        portMappings: [{ HostPort: hostPort, ContainerPort: 8080, Protocol: "tcp", HostIP: "" }],
        bandwidth: { IngressRate: 8_000_000, IngressBurst: MAX_U32, EgressRate: 16_000_000, EgressBurst: MAX_U32 },
        ipRanges: [[{ Subnet: subnet, RangeStart: `${base}.100`, RangeEnd: `${base}.110`, Gateway: `${base}.1` }]],
        dns: { Servers: ["10.96.0.10"], Searches: ["default.svc.cluster.local", "svc.cluster.local"], Options: ["ndots:5"] },
      };

      const result = await addList(path, cid, ns.path, args);
      const ips = result.ips as { address: string; gateway?: string }[];
      expect(ips).toHaveLength(1);
      const podIp = ips[0]!.address.split("/")[0]!;
      const last = Number(podIp.split(".")[3]);
      // The address comes from RangeStart..RangeEnd, with the gateway given.
      expect(podIp.startsWith(`${base}.`) && last >= 100 && last <= 110, podIp).toBe(true);
      expect(ips[0]!.gateway).toBe(`${base}.1`);
      // The config's dns reaches the result under the spec's keys; runtimeConfig.dns (Servers,
      // Searches, Options) is taken and, as by the reference Linux plugins, not used.
      expect(result.dns).toEqual({ nameservers: ["10.96.0.10"], search: ["cluster.local"] });
      const inPod = ipJson<{ ifname: string; addr_info: { local: string; prefixlen: number }[] }>(
        ["addr", "show", "eth0"],
        ns.name,
      );
      expect(inPod[0]!.addr_info.map((a) => `${a.local}/${a.prefixlen}`)).toContain(`${podIp}/24`);
      expect(leases()).toEqual([{ ip: podIp, container_id: cid }]);

      // portmap: the mapping is in the table and carries traffic from the host to the pod.
      expect(portMap()).toMatch(new RegExp(`tcp \\. ${hostPort}( comment "[^"]*")? : ${podIp.replace(/\./g, "\\.")} \\. 8080`));
      let got = "";
      for (let attempt = 0; attempt < 3 && got !== "hello"; attempt++) {
        got = await deliveredThrough(ns.name, 8080, `${base}.1`, hostPort, "hello");
      }
      expect(got).toBe("hello");

      // bandwidth: ingress tbf on the host veth, egress tbf on the IFB (tc reports bytes/s).
      const veth = hostVeth(result);
      expect(qdiscs(veth)).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ kind: "tbf", root: true, options: expect.objectContaining({ rate: 1_000_000 }) }),
        ]),
      );
      const ifb = ifbs();
      expect(ifb).toHaveLength(1);
      expect(qdiscs(ifb[0]!.ifname)).toEqual([
        expect.objectContaining({ kind: "tbf", root: true, options: expect.objectContaining({ rate: 2_000_000 }) }),
      ]);

      await eachPlugin(path, "CHECK", cid, ns.path, args, result);
      for (const round of [1, 2]) {
        await eachPlugin(path, "DEL", cid, ns.path, args, result);
        expect(portMap(), `DEL round ${round}`).not.toContain(podIp);
        expect(ifbs(), `DEL round ${round}`).toEqual([]);
        expect(leases(), `DEL round ${round}`).toEqual([]);
        expect(ipJson<{ ifname: string }>(["link", "show"]).some((l) => l.ifname === veth)).toBe(false);
      }
      sandbox.deleteNetns(ns.name);
    });

    it(`one limited direction: the other arrives as zeros, as go-cni marshals it (${path} path)`, {
      timeout: 60_000,
    }, async () => {
      const cid = `${sandbox.prefix}-${path}2`;
      const ns = sandbox.createNetns(`${path[0]}b`);
      const args: Json = { bandwidth: { IngressRate: 8_000_000, IngressBurst: MAX_U32, EgressRate: 0, EgressBurst: 0 } };
      // Without ipRanges from the runtime, the bridge's IPAM needs its own range.
      const withRanges = (p: Json): Json =>
        p.type === "berth-bridge" ? { ...p, ipam: { ...(p.ipam as Json), ranges: [[{ subnet }]] } } : p;
      let prev: unknown;
      for (const p of plugins().map(withRanges)) prev = (await run(path, "ADD", cid, ns.path, pluginConfig(p, args, prev))).json;
      const result = prev as Json;
      const veth = hostVeth(result);
      expect(qdiscs(veth)).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ kind: "tbf", root: true, options: expect.objectContaining({ rate: 1_000_000 }) }),
        ]),
      );
      expect(qdiscs(veth).some((q) => q.kind === "ingress")).toBe(false);
      expect(ifbs()).toEqual([]);
      for (const p of plugins().map(withRanges)) await run(path, "CHECK", cid, ns.path, pluginConfig(p, args, result));
      for (const p of plugins().map(withRanges).reverse()) await run(path, "DEL", cid, ns.path, pluginConfig(p, args, result));
      expect(leases()).toEqual([]);
      sandbox.deleteNetns(ns.name);
    });
  }

  it("the request containerd sent for a hostPort pod (captured) is taken by ADD, CHECK and DEL", {
    timeout: 60_000,
  }, async () => {
    const cid = `${sandbox.prefix}-cap`;
    const ns = sandbox.createNetns("cap");
    const hostPort = 20_000 + Math.floor(Math.random() * 20_000);
    const bridge = pluginConfig(plugins()[0]!, {}, undefined);
    const prev = (
      await run("cold", "ADD", cid, ns.path, { ...bridge, ipam: { ...(bridge.ipam as Json), ranges: [[{ subnet }]] } })
    ).json as Json;
    // Captured from containerd 1.6 under a kubelet (the socket key and the table are this test's).
    const captured = JSON.parse(
      `{"capabilities":{"portMappings":true},"cniVersion":"1.0.0","name":"${network}","nftTable":"${table}","runtimeConfig":{"portMappings":[{"HostPort":${hostPort},"ContainerPort":8080,"Protocol":"tcp","HostIP":""}]},"type":"berth-portmap"}`,
    ) as Json;
    const podIp = (prev.ips as { address: string }[])[0]!.address.split("/")[0]!;
    await run("cold", "ADD", cid, ns.path, { ...captured, prevResult: prev });
    expect(portMap()).toMatch(new RegExp(`tcp \\. ${hostPort}( comment "[^"]*")? : ${podIp.replace(/\./g, "\\.")} \\. 8080`));
    await run("cold", "CHECK", cid, ns.path, { ...captured, prevResult: prev });
    await run("cold", "DEL", cid, ns.path, { ...captured, prevResult: prev });
    expect(portMap()).not.toContain(podIp);
    // DEL as containerd sends it once the sandbox's result is gone (no prevResult, no netns).
    await run("cold", "DEL", cid, "", captured);
    await run("cold", "DEL", cid, ns.path, {
      ...bridge,
      ipam: { ...(bridge.ipam as Json), ranges: [[{ subnet }]] },
      prevResult: prev,
    });
    expect(leases()).toEqual([]);
    sandbox.deleteNetns(ns.name);
  });
});
