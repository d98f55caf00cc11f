// The agent as a whole: flag parsing (clear errors), riding out an etcd outage without
// touching the dataplane or flapping peers, and running as a process inside a netns
// (`ip netns exec`, the way the multi-host suite runs it), stopped cleanly by SIGTERM.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Subnet } from "../cni/address/address.ts";
import { EtcdProcess } from "../testing/etcd-process.ts";
import { addNetns, delNetns, ipJson, sh, testPrefix } from "../testing/kernel.ts";
import { httpOverUnix, until } from "../testing/poll.ts";
import { Agent } from "./agent.ts";
import { AgentConfigError, parseAgentConfig } from "./config.ts";
import { subnetKey } from "./lease.ts";
import type { Dataplane, DataplaneOp, DataplaneState, ManagedDataplane } from "./reconcile.ts";
import { EtcdStore } from "./store/etcd.ts";
import { LocalStore } from "./store/local.ts";

describe("agent flags", () => {
  const base = ["--cluster-cidr", "10.244.0.0/16"];
  const fails = (argv: string[], message: RegExp) => {
    expect(() => parseAgentConfig(argv)).toThrow(AgentConfigError);
    expect(() => parseAgentConfig(argv)).toThrow(message);
  };

  it("has the documented defaults", () => {
    const c = parseAgentConfig(base);
    expect(c).toMatchObject({
      store: "local",
      etcdPrefix: "/berth/network",
      vni: 1,
      vxlanPort: 4789,
      stateDir: "/var/lib/berth/agent",
      runDir: "/run/berth",
      apiSocket: "/run/berth/agent.sock",
      storeResetGraceSeconds: 60,
    });
    expect(c.apiListen).toBeUndefined();
    expect(parseAgentConfig([...base, "--store-reset-grace", "0"]).storeResetGraceSeconds).toBe(0);
    expect(parseAgentConfig([...base, "--run-dir", "/tmp/x"]).apiSocket).toBe("/tmp/x/agent.sock");
  });

  it("names the offending flag", () => {
    fails([], /--cluster-cidr is required/);
    fails([...base, "--store", "zk"], /--store: expected "local", "etcd" or "kube"/);
    fails([...base, "--store", "kube", "--node-name", "Bad_Name"], /--node-name: "Bad_Name" is not a Kubernetes node name/);
    fails([...base, "--store", "etcd"], /needs --etcd-endpoints/);
    fails([...base, "--store", "etcd", "--etcd-endpoints", "10.0.0.1:2379"], /is not http\(s\):\/\/host:port/);
    fails([...base, "--vni", "16777216"], /--vni: expected a whole number 1..16777215/);
    fails([...base, "--cluster-cidr", "10.244.0.0/33"], /--cluster-cidr/);
    fails([...base, "--public-ip", "10.0.0"], /--public-ip: "10.0.0" is not an IP address/);
    fails([...base, "--api-listen", "nowhere"], /--api-listen: expected HOST:PORT/);
    fails([...base, "--bogus", "1"], /unknown flag --bogus/);
    fails([...base, "--mtu"], /--mtu needs a value/);
    fails([...base, "--etcd-cert", "/c"], /go together/);
    fails([...base, "--store-reset-grace", "-1"], /--store-reset-grace/);
    fails([...base, "--log-format", "yaml"], /--log-format: expected json or text, got "yaml"/);
  });

  it("takes --log-format json|text, absent by default (the terminal decides)", () => {
    expect(parseAgentConfig(base).logFormat).toBeUndefined();
    expect(parseAgentConfig([...base, "--log-format", "text"]).logFormat).toBe("text");
    expect(parseAgentConfig([...base, "--log-format=json"]).logFormat).toBe("json");
  });

  it("binds the TCP API to loopback unless a host is given", () => {
    expect(parseAgentConfig([...base, "--api-listen", ":9090"]).apiListen).toEqual({ host: "127.0.0.1", port: 9090 });
    expect(parseAgentConfig([...base, "--api-listen", "0.0.0.0:9090"]).apiListen).toEqual({ host: "0.0.0.0", port: 9090 });
    expect(parseAgentConfig([...base, "--api-listen=[::1]:9090"]).apiListen).toEqual({ host: "::1", port: 9090 });
  });

  it("reads --config with the same keys, flags winning, and rejects unknown keys", () => {
    const dir = mkdtempSync(join(tmpdir(), "berth-cfg-"));
    try {
      const file = join(dir, "agent.json");
      writeFileSync(file, JSON.stringify({ "cluster-cidr": ["10.1.0.0/16", "fd00:1::/48"], vni: 7, mtu: 1400, stateDir: "/s" }));
      const c = parseAgentConfig(["--config", file, "--vni", "9"]);
      expect(c).toMatchObject({ clusterCidrs: ["10.1.0.0/16", "fd00:1::/48"], vni: 9, mtu: 1400, stateDir: "/s" });
      writeFileSync(file, JSON.stringify({ clusterCidr: "10.1.0.0/16" }));
      expect(() => parseAgentConfig(["--config", file])).toThrow(/unknown key "clusterCidr"/);
      writeFileSync(file, "{");
      expect(() => parseAgentConfig(["--config", file])).toThrow(AgentConfigError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("overlay MTU", () => {
  it("is the underlay MTU minus 50 over IPv4 and minus 70 over IPv6, and a larger --mtu is refused", async () => {
    const dir = mkdtempSync(join(tmpdir(), "berth-mtu-"));
    const made: Agent[] = [];
    const make = (family: 4 | 6, extra: string[] = []) => {
      const a = new Agent(
        parseAgentConfig([
          "--cluster-cidr",
          "10.244.0.0/16",
          "--state-dir",
          join(dir, "s"),
          "--run-dir",
          join(dir, "r"),
          ...extra,
        ]),
        {
          logger: pino({ level: "silent" }),
          underlay: { iface: "lo", publicIP: family === 4 ? "192.0.2.1" : "2001:db8::1", family, mtu: 1500 },
        },
      );
      made.push(a);
      return a;
    };
    try {
      expect(make(4).mtu).toBe(1450);
      expect(make(6).mtu).toBe(1430);
      expect(make(6, ["--mtu", "1400"]).mtu).toBe(1400);
      expect(() => make(6, ["--mtu", "1450"])).toThrow(
        /--mtu 1450 is too large: lo has MTU 1500, VXLAN over IPv6 needs 70 bytes, so at most 1430/,
      );
    } finally {
      for (const a of made) await a.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Records every operation; behaves like the kernel for the diff. */
class RecordingDataplane implements ManagedDataplane {
  state: DataplaneState = { neighbours: [], fdb: [], routes: [] };
  applied: DataplaneOp[] = [];
  async ensureDevice(): Promise<boolean> {
    return false;
  }
  async read(): Promise<DataplaneState> {
    return structuredClone(this.state);
  }
  async apply(op: DataplaneOp): Promise<void> {
    this.applied.push(op);
    const s = this.state;
    if (op.op === "neigh-replace") s.neighbours = [...s.neighbours.filter((n) => n.ip !== op.ip), { ip: op.ip, mac: op.mac }];
    if (op.op === "neigh-del") s.neighbours = s.neighbours.filter((n) => n.ip !== op.ip);
    if (op.op === "fdb-replace") s.fdb = [...s.fdb.filter((f) => f.mac !== op.mac), { mac: op.mac, dst: op.dst }];
    if (op.op === "fdb-del") s.fdb = s.fdb.filter((f) => f.mac !== op.mac);
    if (op.op === "route-replace") s.routes = [...s.routes.filter((r) => r.dst !== op.dst), { dst: op.dst, gateway: op.gateway }];
    if (op.op === "route-del") s.routes = s.routes.filter((r) => r.dst !== op.dst);
  }
  watch(): void {}
  close(): void {}
}

describe("agent peer filtering", () => {
  it("programs only leases inside the cluster network with the configured subnet length", async () => {
    const dir = mkdtempSync(join(tmpdir(), "berth-filter-"));
    const store = new LocalStore({ path: join(dir, "store.db"), pollIntervalMs: 20 });
    const dataplane = new RecordingDataplane();
    const agent = new Agent(
      parseAgentConfig(["--cluster-cidr", "10.244.0.0/16", "--state-dir", join(dir, "s"), "--run-dir", join(dir, "r")]),
      {
        store,
        logger: pino({ level: "silent" }),
        underlay: { iface: "lo", publicIP: "192.0.2.1", family: 4, mtu: 1500 },
        dataplane: async () => dataplane,
      },
    );
    const value = (n: number) =>
      JSON.stringify({ publicIP: `192.0.2.${n}`, vtepMAC: `02:00:00:00:00:${n}`, vni: 1, hostname: `h${n}` });
    try {
      await agent.start();
      await store.create("/berth/network/subnets/0.0.0.0-0", value(21), null);
      await store.create("/berth/network/subnets/10.245.1.0-24", value(22), null);
      await store.create("/berth/network/subnets/10.244.0.0-20", value(23), null);
      await store.create("/berth/network/subnets/10.244.9.0-24", "{not json", null);
      await store.create("/berth/network/subnets/10.244.30.0-24", value(24), null);
      await until(
        () => dataplane.state.routes.map((r) => r.dst),
        (d) => d.length === 1,
        "the one valid peer programmed",
      );
      await new Promise((r) => setTimeout(r, 300));
      expect(dataplane.state.routes.map((r) => r.dst)).toEqual(["10.244.30.0/24"]);
      expect(agent.peerViews().map((p) => p.subnet)).toEqual(["10.244.30.0/24"]);
    } finally {
      await agent.stop();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("agent on etcd through an outage", () => {
  let etcd: EtcdProcess;
  let dir: string;

  beforeAll(async () => {
    etcd = await EtcdProcess.start();
  });
  afterAll(async () => {
    await etcd?.destroy();
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "berth-agent-"));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it("keeps the dataplane untouched, reports not-ready, and converges without flapping when etcd returns", async () => {
    const dataplane = new RecordingDataplane();
    const config = parseAgentConfig([
      "--store",
      "etcd",
      "--etcd-endpoints",
      etcd.endpoint,
      "--cluster-cidr",
      "10.244.0.0/16",
      "--state-dir",
      join(dir, "state"),
      "--run-dir",
      join(dir, "run"),
      "--reconcile-interval",
      "200",
    ]);
    const agent = new Agent(config, {
      logger: pino({ level: "silent" }),
      underlay: { iface: "lo", publicIP: "192.0.2.1", family: 4, mtu: 1500 },
      dataplane: async () => dataplane as Dataplane as ManagedDataplane,
    });
    const writer = new EtcdStore({ endpoints: [etcd.endpoint] });
    try {
      await agent.start();
      for (const n of [11, 12]) {
        await writer.create(
          subnetKey("/berth/network", Subnet.parse(`10.244.${n}.0/24`)),
          JSON.stringify({ publicIP: `192.0.2.${n}`, vtepMAC: `02:00:00:00:00:${n}`, vni: 1, hostname: `h${n}` }),
          600,
        );
      }
      await until(
        () => agent.readiness().ready && dataplane.state.routes.length === 2,
        (v) => v,
        "ready with two peers",
      );
      const before = dataplane.applied.length;

      await etcd.stop();
      const down = await until(
        () => httpOverUnix(config.apiSocket, "/readyz"),
        (r) => r.status === 503,
        "not ready while etcd is down",
      );
      expect(JSON.parse(down.body).reasons.join()).toMatch(/cluster store \(etcd\) unreachable/);
      // Let the agent retry a few times against a dead store.
      await new Promise((r) => setTimeout(r, 2000));
      expect(dataplane.applied.length).toBe(before);
      expect(dataplane.state.routes).toHaveLength(2);
      expect(JSON.parse(readFileSync(join(dir, "run", "overlay.json"), "utf8")).ready).toBe(true);

      await etcd.resume();
      await until(
        () => httpOverUnix(config.apiSocket, "/readyz"),
        (r) => r.status === 200,
        "ready again after etcd returned",
        40_000,
      );
      // Converged by re-listing: the unchanged peers saw no operation at all.
      await new Promise((r) => setTimeout(r, 500));
      expect(dataplane.applied.slice(before)).toEqual([]);
      // And it still follows changes afterwards.
      await writer.delete(subnetKey("/berth/network", Subnet.parse("10.244.11.0/24")));
      await until(
        () => dataplane.state.routes.length,
        (n) => n === 1,
        "peer removal after the outage",
      );
      const metrics = (await httpOverUnix(config.apiSocket, "/metrics")).body;
      expect(metrics).toMatch(/berth_overlay_store_up 1/);
      expect(metrics).toMatch(/berth_overlay_watch_resets_total\{reason="(disconnected|error)"\} [1-9]/);
    } finally {
      await agent.stop();
      await writer.close();
    }
  });

  it("after a wiped etcd: registers again, keeps the peers for the grace period, drops the ones that did not come back", async () => {
    const dataplane = new RecordingDataplane();
    const config = parseAgentConfig([
      "--store",
      "etcd",
      "--etcd-endpoints",
      etcd.endpoint,
      "--cluster-cidr",
      "10.244.0.0/16",
      "--state-dir",
      join(dir, "state"),
      "--run-dir",
      join(dir, "run"),
      "--reconcile-interval",
      "200",
      "--store-reset-grace",
      "3",
      // Apart from what the test before left in this etcd.
      "--etcd-prefix",
      "/berth-wipe",
    ]);
    const agent = new Agent(config, {
      logger: pino({ level: "silent" }),
      underlay: { iface: "lo", publicIP: "192.0.2.2", family: 4, mtu: 1500 },
      dataplane: async () => dataplane as Dataplane as ManagedDataplane,
    });
    const writer = new EtcdStore({ endpoints: [etcd.endpoint] });
    const peer = (n: number) => ({
      key: subnetKey("/berth-wipe", Subnet.parse(`10.244.${n}.0/24`)),
      value: JSON.stringify({ publicIP: `192.0.2.${n}`, vtepMAC: `02:00:00:00:00:${n}`, vni: 1, hostname: `h${n}` }),
    });
    try {
      await agent.start();
      // Enough history that the wiped store's revision is certainly lower.
      for (let i = 0; i < 20; i++) await writer.create(`/berth-test/filler/${i}`, "x", null);
      for (const n of [21, 22]) await writer.create(peer(n).key, peer(n).value, 600);
      await until(
        () => agent.readiness().ready && dataplane.state.routes.length === 2,
        (v) => v,
        "ready with two peers",
      );
      const own = agent.leaseView()!;
      const before = dataplane.applied.length;

      await etcd.stop();
      rmSync(join(etcd.dataDir, "data"), { recursive: true, force: true });
      await etcd.resume();
      const back = Date.now();
      // Our lease is back on the same subnet; h21 comes back, h22 never does.
      await until(
        () => writer.list("/berth-wipe/subnets/").catch(() => ({ entries: [] })),
        (l) => l.entries.some((e) => e.key === own.key),
        "our lease registered again",
        10_000,
      );
      await writer.create(peer(21).key, peer(21).value, 600);
      await until(
        () => httpOverUnix(config.apiSocket, "/metrics"),
        (r) => /berth_overlay_store_resets_total [1-9]/.test(r.body),
        "the reset noticed",
      );
      // Within the grace period nothing was touched.
      expect(Date.now() - back).toBeLessThan(3000);
      expect(dataplane.applied.slice(before)).toEqual([]);
      expect(dataplane.state.routes.map((r) => r.dst).sort()).toEqual(["10.244.21.0/24", "10.244.22.0/24"]);
      // After it, h22's entries go; h21's stay untouched.
      await until(
        () => dataplane.state.routes.map((r) => r.dst),
        (d) => d.length === 1,
        "h22 removed after the grace period",
        10_000,
      );
      expect(Date.now() - back).toBeGreaterThanOrEqual(2500);
      expect(dataplane.state.routes.map((r) => r.dst)).toEqual(["10.244.21.0/24"]);
      const ops = dataplane.applied.slice(before);
      expect(ops.map((o) => o.op).sort()).toEqual(["fdb-del", "neigh-del", "route-del"]);
      expect(ops.every((o) => JSON.stringify(o).includes("22"))).toBe(true);
      expect(agent.leaseView()!.subnet).toBe(own.subnet);
    } finally {
      await agent.stop();
      await writer.close();
    }
  });
});

describe("agent process inside a netns", () => {
  let p: string;
  let ns: string;
  let dir: string;
  let child: ChildProcess | undefined;

  beforeEach(() => {
    p = testPrefix();
    ns = `${p}n`;
    dir = mkdtempSync(join(tmpdir(), `berth-${p}-`));
    addNetns(ns);
    sh("ip", ["-n", ns, "link", "add", `${p}a`, "mtu", "9000", "type", "veth", "peer", "name", `${p}b`, "mtu", "9000"]);
    sh("ip", ["-n", ns, "addr", "add", "198.51.100.1/24", "dev", `${p}a`]);
    sh("ip", ["-n", ns, "link", "set", `${p}a`, "up"]);
    sh("ip", ["-n", ns, "link", "set", `${p}b`, "up"]);
  });

  afterEach(async () => {
    if (child && child.exitCode === null) {
      const gone = new Promise((r) => child!.once("exit", r));
      child.kill("SIGKILL");
      await gone;
    }
    child = undefined;
    delNetns(ns);
    rmSync(dir, { recursive: true, force: true });
  });

  it("`berth up` runs under ip netns exec with only its own dirs, and SIGTERM stops it cleanly", async () => {
    const socket = join(dir, "agent.sock");
    const script = `import { runUp } from ${JSON.stringify(join(import.meta.dirname, "agent.ts"))}; process.exitCode = await runUp(process.argv.slice(1));`;
    child = spawn(
      "ip",
      [
        "netns",
        "exec",
        ns,
        process.execPath,
        "--import",
        "tsx",
        "--input-type=module",
        "-e",
        script,
        "--",
        "--state-dir",
        join(dir, "state"),
        "--run-dir",
        join(dir, "run"),
        "--api-socket",
        socket,
        "--underlay-iface",
        `${p}a`,
      ],
      { stdio: ["ignore", "ignore", "pipe"], cwd: join(import.meta.dirname, "..") },
    );
    let stderr = "";
    child.stderr?.on("data", (d) => {
      stderr += d;
    });
    const exited = new Promise<number | null>((r) => child!.once("exit", (code) => r(code)));
    try {
      await until(
        () => httpOverUnix(socket, "/readyz"),
        (r) => r.status === 200,
        "agent ready",
        30_000,
      );
    } catch (e) {
      throw new Error(`${(e as Error).message}\nagent stderr:\n${stderr}`);
    }
    const lease = JSON.parse((await httpOverUnix(socket, "/v1/lease")).body);
    expect(lease.publicIP).toBe("198.51.100.1");
    expect(lease.subnet).toMatch(/^10\.244\.\d+\.0\/24$/);
    // The device is in the agent's namespace, sized from the 9000-byte underlay.
    const [link] = ipJson(["link", "show", "berth.1"], ns);
    expect(link.mtu).toBe(8950);
    expect(link.linkinfo.info_data).toMatchObject({ local: "198.51.100.1", link: `${p}a` });
    expect(JSON.parse(readFileSync(join(dir, "run", "overlay.json"), "utf8"))).toMatchObject({ ready: true, mtu: 8950 });
    // Logs are JSON lines on stderr.
    expect(stderr.split("\n").filter((l) => l && !l.startsWith("{"))).toEqual([]);

    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(JSON.parse(readFileSync(join(dir, "run", "overlay.json"), "utf8")).ready).toBe(false);
  });
});
