// `berth status` against what really runs: two agents on one embedded store in their host
// namespaces (testing/cluster.ts), pods attached through berth-overlay, and a
// CSI driver with a published dir volume and a block volume. Then with the agent stopped, and
// with damaged databases.
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseHostLocalConfig } from "../cni/ipam/ranges.ts";
import { LeaseStore } from "../cni/ipam/store.ts";
import { Cluster, type Container, type Host, until } from "../testing/cluster.ts";
import { blockCap, createTestDriver, MiB, mountCap, type TestDriver } from "../testing/csi-test-driver.ts";
import { testPrefix } from "../testing/kernel.ts";
import type { StatusReport } from "./status.ts";

const REPO = resolve(import.meta.dirname, "..");

function status(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(REPO, "bin", "berth"), "status", ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function statusJson(args: string[]): { code: number | null; report: StatusReport } {
  const r = status([...args, "--json"]);
  expect(r.stderr).toBe("");
  return { code: r.code, report: JSON.parse(r.stdout) as StatusReport };
}

describe.sequential("berth status on a running host", () => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-status-`));
  const confDir = join(dir, "net.d");
  let cluster: Cluster | undefined;
  let h1: Host;
  let h2: Host;
  let pods: Container[] = [];
  let t: TestDriver;
  let dirVolume: string;
  let blockVolume: string;
  let target: string;
  let args: string[];

  beforeAll(async () => {
    mkdirSync(confDir);
    cluster = await Cluster.create({ store: "local", clusterCidrs: ["10.252.0.0/16"] }, (c) => {
      cluster = c;
    });
    h1 = await cluster.addHost();
    h2 = await cluster.addHost();
    // One store file for both: agents sharing it form one cluster, so each has a peer.
    h1.startAgent(["--local-store", join(dir, "store.db")]);
    h2.startAgent(["--local-store", join(dir, "store.db")]);
    await h1.waitReady();
    await h2.waitReady();
    pods = [await h1.addContainer(), await h1.addContainer()];
    const peer = (await h2.lease()).subnet;
    await until(
      "h1 sees h2 as a peer",
      () => h1.api("/v1/peers"),
      (r) => r.body.includes(peer),
    );

    t = await createTestDriver(testPrefix());
    await t.start();
    const cap = mountCap();
    const dv = await t.controller.CreateVolume({
      name: "pvc-status-dir",
      capacity_range: { required_bytes: String(64 * MiB) },
      volume_capabilities: [cap],
    });
    dirVolume = dv.volume.volume_id;
    const staging = t.path("stage");
    target = t.path("pod");
    mkdirSync(staging, { recursive: true });
    await t.node.NodeStageVolume({ volume_id: dirVolume, staging_target_path: staging, volume_capability: cap });
    await t.node.NodePublishVolume({
      volume_id: dirVolume,
      staging_target_path: staging,
      target_path: target,
      volume_capability: cap,
      readonly: false,
    });
    writeFileSync(join(target, "data"), Buffer.alloc(4 * MiB, 1));
    const bv = await t.controller.CreateVolume({
      name: "pvc-status-block",
      capacity_range: { required_bytes: String(32 * MiB) },
      volume_capabilities: [blockCap()],
      parameters: { kind: "block" },
    });
    blockVolume = bv.volume.volume_id;

    args = [
      "--api-socket",
      h1.socket,
      "--run-dir",
      h1.runDir,
      "--ipam-dir",
      join(h1.cniDataDir, "ipam"),
      "--cni-conf-dir",
      confDir,
      "--csi-state-dir",
      t.stateDir,
      "--csi-data-dir",
      t.dataDir,
    ];
  }, 120_000);

  afterAll(async () => {
    await t?.cleanup();
    await cluster?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it("--json: the agent, its lease and peer, the pool, the attachments and the volumes", { timeout: 60_000 }, async () => {
    const lease = await h1.lease();
    const peer = await h2.lease();
    const { code, report } = statusJson(args);
    expect(report.problems).toEqual([]);
    expect(code).toBe(0);
    expect(report.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(report.agent).toMatchObject({
      socket: h1.socket,
      up: true,
      ready: true,
      reasons: [],
      store: { kind: "local", up: true },
    });
    expect(report.agent.lease).toMatchObject({ subnet: lease.subnet, network: "10.252.0.0/16", vni: 1 });
    expect(report.agent.peers?.map((p) => p.subnet)).toEqual([peer.subnet]);

    // A /24 host subnet: 254 hosts, the gateway (bridge) not handed out.
    expect(report.networks).toEqual([
      {
        name: "berth-mh",
        ipamDir: join(h1.cniDataDir, "ipam"),
        used: 2,
        size: 253,
        free: 251,
        pools: [{ ranges: [lease.subnet], used: 2, size: 253, free: 251 }],
      },
    ]);
    expect(report.attachments.map((a) => [a.containerId, a.ifname, a.network, a.addresses]).sort()).toEqual(
      pods.map((p) => [`mh-${p.name}`, "eth0", "berth-mh", [p.ipv4]]).sort(),
    );

    const byId = new Map(report.csi.volumes.map((v) => [v.id, v]));
    expect(byId.get(dirVolume)).toMatchObject({
      name: "pvc-status-dir",
      kind: "dir",
      fsType: "ext4",
      size: 64 * MiB,
      status: "ready",
      condition: "",
      publishedAt: [target],
    });
    // The 4 MiB file written through the publication shows in the volume's filesystem.
    expect(byId.get(dirVolume)!.used).toBeGreaterThanOrEqual(4 * MiB);
    expect(byId.get(dirVolume)!.stagedAt).not.toBeNull();
    expect(byId.get(blockVolume)).toMatchObject({
      name: "pvc-status-block",
      kind: "block",
      size: 32 * MiB,
      publishedAt: [],
      stagedAt: null,
    });
  });

  it("text: one readable section each", { timeout: 60_000 }, async () => {
    const lease = await h1.lease();
    const r = status(args);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^agent +ready \\(${h1.socket}\\)$`, "m"));
    expect(r.stdout).toMatch(/^store +local, reachable$/m);
    expect(r.stdout).toContain(`subnet   ${lease.subnet} of 10.252.0.0/16`);
    expect(r.stdout).toMatch(/^peers +1$/m);
    expect(r.stdout).toContain(`  berth-mh  ${lease.subnet}: 2 used, 251 free of 253`);
    for (const p of pods) expect(r.stdout).toContain(`  mh-${p.name}  eth0  berth-mh  ${p.ipv4}`);
    expect(r.stdout).toMatch(
      new RegExp(`^  pvc-status-dir  dir ext4  64 MiB, .* used  healthy  staged at .*; published at ${target}$`, "m"),
    );
    expect(r.stdout).not.toContain("problems");
  });

  it("with the agent down: says so, and still shows the leases, the last subnet and the volumes", {
    timeout: 60_000,
  }, async () => {
    const lease = await h1.lease();
    await h1.stopAgent();
    const { code, report } = statusJson(args);
    expect(code).toBe(1);
    expect(report.agent.up).toBe(false);
    expect(report.agent.error).toBe(`no agent listening on ${h1.socket} (ENOENT)`);
    expect(report.agent.lastRuntime?.subnets).toEqual([lease.subnet]);
    expect(report.problems).toEqual([`agent down: no agent listening on ${h1.socket} (ENOENT)`]);
    // The pool is still sized from the subnet the agent last held.
    expect(report.networks[0]).toMatchObject({ name: "berth-mh", used: 2, size: 253, free: 251 });
    expect(report.attachments).toHaveLength(2);
    expect(report.csi.volumes).toHaveLength(2);

    const text = status(args);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain(`agent    DOWN: no agent listening on ${h1.socket} (ENOENT)`);
    expect(text.stdout).toContain(`subnet   ${lease.subnet} (last written by the agent at `);
    expect(text.stdout).toMatch(/^problems\n {2}- agent down: /m);
  });
});

describe("berth status for berth-host-local networks", () => {
  it("sizes each pool from the network's config; a network without one is counted, a full pool is a problem", () => {
    const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-status-hl-`));
    try {
      const ipamDir = join(dir, "ipam");
      const confDir = join(dir, "net.d");
      mkdirSync(confDir);
      // A /29: hosts .1-.6, .1 the gateway, so 5 to hand out; a second range set of two addresses.
      const ipam = {
        type: "berth-host-local",
        dataDir: ipamDir,
        ranges: [[{ subnet: "10.9.0.0/29" }], [{ subnet: "10.9.1.0/29", rangeStart: "10.9.1.2", rangeEnd: "10.9.1.3" }]],
      };
      writeFileSync(
        join(confDir, "10-net1.conflist"),
        JSON.stringify({ cniVersion: "1.0.0", name: "net1", plugins: [{ type: "berth-bridge", bridge: "x", ipam }] }),
      );
      writeFileSync(join(confDir, "20-broken.conf"), "{ not json");
      const store = LeaseStore.open(ipamDir);
      try {
        const { rangeSets } = parseHostLocalConfig(ipam);
        for (const id of ["a", "b"]) store.allocate({ network: "net1", containerId: id, ifname: "eth0" }, rangeSets);
        const other = parseHostLocalConfig({ ranges: [[{ subnet: "10.9.2.0/24" }]] }).rangeSets;
        store.allocate({ network: "net2", containerId: "c", ifname: "net0" }, other);
      } finally {
        store.close();
      }
      const { code, report } = statusJson([
        "--api-socket",
        join(dir, "none.sock"),
        "--run-dir",
        join(dir, "run"),
        "--ipam-dir",
        ipamDir,
        "--cni-conf-dir",
        confDir,
        "--csi-state-dir",
        join(dir, "csi"),
      ]);
      expect(code).toBe(1);
      expect(report.networks).toEqual([
        {
          name: "net1",
          ipamDir,
          used: 4,
          size: 7,
          free: 3,
          pools: [
            { ranges: ["10.9.0.0/29"], used: 2, size: 5, free: 3 },
            { ranges: ["10.9.1.0/29 10.9.1.2-10.9.1.3"], used: 2, size: 2, free: 0 },
          ],
        },
        { name: "net2", ipamDir, used: 1 },
      ]);
      expect(report.attachments).toEqual([
        { network: "net1", containerId: "a", ifname: "eth0", addresses: ["10.9.0.2", "10.9.1.2"], ipamDir },
        { network: "net1", containerId: "b", ifname: "eth0", addresses: ["10.9.0.3", "10.9.1.3"], ipamDir },
        { network: "net2", containerId: "c", ifname: "net0", addresses: ["10.9.2.2"], ipamDir },
      ]);
      expect(report.problems.filter((p) => !p.startsWith("agent down"))).toEqual([
        expect.stringMatching(/^network config .*20-broken\.conf: /),
        "network net1: pool 10.9.1.0/29 10.9.1.2-10.9.1.3 is full",
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("berth status with damaged state", () => {
  it("an unreadable lease database and CSI state are one line each, never a stack trace", () => {
    const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-status-bad-`));
    try {
      const garbage = join(dir, "garbage");
      const empty = join(dir, "missing");
      const dirAsDb = join(dir, "dirdb");
      const csi = join(dir, "csi");
      for (const d of [garbage, empty, csi]) mkdirSync(d);
      mkdirSync(join(dirAsDb, "ipam.db"), { recursive: true });
      writeFileSync(join(garbage, "ipam.db"), Buffer.alloc(8192, 0x5a));
      writeFileSync(join(csi, "csi.db"), "this is not a database, it is text\n".repeat(200));
      const args = [
        "--api-socket",
        join(dir, "none.sock"),
        "--run-dir",
        join(dir, "run"),
        "--ipam-dir",
        garbage,
        "--ipam-dir",
        empty,
        "--ipam-dir",
        dirAsDb,
        "--cni-conf-dir",
        join(dir, "net.d"),
        "--csi-state-dir",
        csi,
      ];
      const { code, report } = statusJson(args);
      expect(code).toBe(1);
      expect(report.ipam.map((i) => [i.dir, i.error])).toEqual([
        [garbage, expect.stringMatching(/garbage\/ipam\.db: damaged or not a database \(file is not a database\)$/)],
        [empty, expect.stringMatching(/missing\/ipam\.db: /)],
        [dirAsDb, expect.stringMatching(/dirdb\/ipam\.db: cannot be (opened|read)/)],
      ]);
      expect(report.csi.error).toMatch(/csi\/csi\.db: damaged or not a database/);
      expect(report.problems).toHaveLength(5);

      const text = status(args);
      expect(text.code).toBe(1);
      expect(text.stderr).toBe("");
      expect(text.stdout).not.toMatch(/^\s+at /m);
      expect(text.stdout).toMatch(/^ {2}- lease database .*garbage\/ipam\.db: damaged or not a database/m);
      expect(text.stdout).toMatch(/^networks\n {2}unreadable: .*garbage\/ipam\.db: damaged or not a database/m);
      expect(text.stdout).toMatch(/^ {2}unreadable: .*csi\.db: damaged or not a database/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a bad flag is exit 2 with the usage", () => {
    const r = status(["--bogus"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^berth status: Unknown option '--bogus'/);
    expect(r.stderr).toContain("usage: berth status");
  });
});
