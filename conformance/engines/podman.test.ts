// Podman 4.3 (CNI backend) as the engine for berth-bridge + berth-host-local: two busybox
// containers on a dual-stack berth network get their addresses from berth's lease database,
// hold exactly those in their netns, reach each other and the gateway, and give the addresses
// back when they are stopped and removed. Read back from the kernel (ip -j in each container's
// netns, the bridge's ports, nft) and from the SQLite file, not from berth's own answers.
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { installBerth } from "../../testing/install.ts";
import { ipJson, sh } from "../../testing/kernel.ts";
import { makePodmanEnv, missingForEngineTest, type PodmanEnv } from "../../testing/podman.ts";
import { Sandbox } from "../../testing/sandbox.ts";

// The checkout's build; beforeAll lays it out with `berth install`, as an operator would.
const BERTH_CNI = resolve(import.meta.dirname, "../../build/cni");

const missing = missingForEngineTest({
  cniDir: BERTH_CNI,
  plugins: ["berth-bridge", "berth-host-local"],
  commands: ["podman", "runc", "nsenter"],
  files: ["/usr/bin/busybox"],
});
if (missing.length > 0) console.warn(`SKIPPED: Podman on a berth-bridge network — missing ${missing.join(", ")}`);

interface Inspected {
  id: string;
  ip: string;
  ip6: string;
  gateway: string;
  netnsPath: string;
}

interface LeaseRow {
  ip: string;
  container_id: string;
  ifname: string;
}

describe.skipIf(missing.length > 0)("Podman runs containers on a berth-bridge network", () => {
  // The Sandbox gives this test a /24 no host route overlaps; its netns and bridge naming too.
  const sandbox = new Sandbox();
  const prefix = sandbox.prefix;
  const bridge = sandbox.bridgeName;
  const network = `${prefix}-pod`;
  const { subnet, base } = sandbox.allocateSubnet(24);
  const hex = () => (0x1000 + Math.floor(Math.random() * 0xf000)).toString(16);
  const v6 = `fd${Math.floor(16 + Math.random() * 240).toString(16)}:${hex()}:${hex()}:${hex()}`;
  let env: PodmanEnv;
  let dataDir: string;

  const leases = (): LeaseRow[] => {
    const file = join(dataDir, "ipam.db");
    if (!existsSync(file)) return [];
    const db = new Database(file, { readonly: true, fileMustExist: true });
    try {
      return db.prepare("SELECT ip, container_id, ifname FROM leases WHERE network = ? ORDER BY ip").all(network) as LeaseRow[];
    } finally {
      db.close();
    }
  };

  const masqueraded = (): string[] => {
    try {
      return [...sh("nft", ["list", "table", "inet", prefix]).matchAll(/([0-9a-f.:]+) comment "/g)].map((m) => m[1]!);
    } catch {
      return [];
    }
  };

  const bridgePorts = (): string[] => {
    try {
      return ipJson<{ ifname: string }>(["link", "show", "master", bridge]).map((l) => l.ifname);
    } catch {
      return [];
    }
  };

  async function run(name: string): Promise<Inspected> {
    await env.podman(["run", "-d", "--name", name, "--network", network, "--rootfs", env.rootfs, "sleep", "300"]);
    const { stdout } = await env.podman(["inspect", name]);
    const [c] = JSON.parse(stdout) as {
      Id: string;
      NetworkSettings: {
        SandboxKey: string;
        Networks: Record<string, { IPAddress: string; GlobalIPv6Address: string; Gateway: string }>;
      };
    }[];
    if (!c) throw new Error(`podman inspect ${name} printed no container`);
    const n = c.NetworkSettings.Networks[network];
    if (!n?.IPAddress || !n.GlobalIPv6Address) throw new Error(`podman inspect shows no addresses on ${network}: ${stdout}`);
    return { id: c.Id, ip: n.IPAddress, ip6: n.GlobalIPv6Address, gateway: n.Gateway, netnsPath: c.NetworkSettings.SandboxKey };
  }

  /** Global addresses on eth0 as the kernel holds them inside the container's netns. */
  function kernelAddresses(c: Inspected): string[] {
    const out = execFileSync("nsenter", [`--net=${c.netnsPath}`, "ip", "-j", "addr", "show", "dev", "eth0"], {
      encoding: "utf8",
    });
    const link = (JSON.parse(out) as { addr_info: { local: string; scope: string }[] }[])[0]!;
    return link.addr_info
      .filter((a) => a.scope === "global")
      .map((a) => a.local)
      .sort();
  }

  async function pingFrom(name: string, ip: string): Promise<boolean> {
    try {
      await env.podman(["exec", name, "ping", "-c1", "-W2", ip]);
      return true;
    } catch {
      return false;
    }
  }

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), `${prefix}-podman-`));
    dataDir = join(dir, "ipam");
    const { binDir } = await installBerth(dir);
    env = makePodmanEnv(dir, [binDir, "/usr/lib/cni"]);
    // Plugins inherit Podman's environment: "off" keeps every call on the cold path, so the
    // outcome does not depend on whether an agent happens to listen on this host.
    env.env.BERTH_CNI_SOCKET = "off";
    const conflist = {
      cniVersion: "1.0.0",
      name: network,
      plugins: [
        {
          type: "berth-bridge",
          bridge,
          isGateway: true,
          ipMasq: true,
          nftTable: prefix,
          ipam: {
            type: "berth-host-local",
            dataDir,
            ranges: [[{ subnet }], [{ subnet: `${v6}::/64` }]],
            routes: [{ dst: "0.0.0.0/0" }, { dst: "::/0" }],
          },
        },
      ],
    };
    writeFileSync(join(env.netconfDir, `${network}.conflist`), JSON.stringify(conflist, null, 2));
  });

  afterAll(async () => {
    try {
      await env?.cleanup();
    } finally {
      sandbox.cleanup(); // the bridge (kept by berth-bridge, as by the reference) and temp dirs
      for (const family of ["inet", "bridge"]) {
        try {
          sh("nft", ["delete", "table", family, prefix]);
        } catch {
          // not created
        }
      }
    }
  }, 60_000);

  it("addresses come from berth IPAM, match the kernel, and carry traffic; stop and rm give them back", {
    timeout: 180_000,
  }, async () => {
    const a = await run(`${prefix}-a`);
    const b = await run(`${prefix}-b`);

    // The lease database holds exactly the two containers' addresses, under Podman's container ids.
    expect(leases()).toEqual(
      [
        { ip: a.ip, container_id: a.id, ifname: "eth0" },
        { ip: a.ip6, container_id: a.id, ifname: "eth0" },
        { ip: b.ip, container_id: b.id, ifname: "eth0" },
        { ip: b.ip6, container_id: b.id, ifname: "eth0" },
      ].sort((x, y) => (x.ip < y.ip ? -1 : 1)),
    );
    expect(a.ip.startsWith(`${base}.`)).toBe(true);
    expect(a.gateway).toBe(`${base}.1`);
    expect(kernelAddresses(a)).toEqual([a.ip, a.ip6].sort());
    expect(kernelAddresses(b)).toEqual([b.ip, b.ip6].sort());
    expect(bridgePorts()).toHaveLength(2);
    expect(masqueraded().sort()).toEqual([a.ip, a.ip6, b.ip, b.ip6].sort());

    expect(await pingFrom(`${prefix}-a`, b.ip)).toBe(true);
    expect(await pingFrom(`${prefix}-b`, a.ip6)).toBe(true);
    expect(await pingFrom(`${prefix}-a`, `${base}.1`)).toBe(true);
    expect(await pingFrom(`${prefix}-b`, `${v6}::1`)).toBe(true);

    // Stopping tears the network down (CNI DEL): a's addresses go back, b's stay.
    await env.podman(["stop", "-t", "0", `${prefix}-a`]);
    expect(leases().map((l) => l.container_id)).toEqual([b.id, b.id]);
    expect(bridgePorts()).toHaveLength(1);
    expect(masqueraded().sort()).toEqual([b.ip, b.ip6].sort());
    expect(await pingFrom(`${prefix}-b`, `${base}.1`)).toBe(true);

    await env.podman(["rm", "-f", "-t", "0", `${prefix}-a`, `${prefix}-b`]);
    expect(leases()).toEqual([]);
    expect(bridgePorts()).toEqual([]);
    expect(masqueraded()).toEqual([]);

    // The same network serves a new container, with a released address available again.
    const c = await run(`${prefix}-c`);
    expect([a.ip, b.ip, ...Array.from({ length: 10 }, (_, i) => `${base}.${i + 2}`)]).toContain(c.ip);
    expect(kernelAddresses(c)).toEqual([c.ip, c.ip6].sort());
    await env.podman(["rm", "-f", "-t", "0", `${prefix}-c`]);
    expect(leases()).toEqual([]);
  });
});
