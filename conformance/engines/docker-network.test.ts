// berth bridge networks in the real Docker Engine (Debian docker.io 20.10) through
// `berth docker-plugin` as NetworkDriver and IpamDriver: a private dockerd, the plugin as a
// child process on a socket named for this test, its own lease store, nftables table and
// bridge name (all tagged bt<run>). Outcomes are read back from the kernel (ip -j), nftables
// and the lease database.
import { type ChildProcess, execFileSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { get } from "node:http";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  berthNetworkCreate,
  DOCKER_PLUGIN_DIR,
  type DockerEngine,
  missingForDockerTest,
  startDockerd,
  startDockerPlugin,
  stopDockerPlugin,
} from "../../testing/docker.ts";
import { ipJson, testPrefix } from "../../testing/kernel.ts";
import { httpOverUnix, until } from "../../testing/poll.ts";
import { teardownKernelObjects } from "../../testing/storage.ts";

const _ROOT = resolve(import.meta.dirname, "../..");
const missing = missingForDockerTest();
const prefix = testPrefix();
const base = `/tmp/${prefix}-dnet`;
const plugin = `${prefix}net`;
const socket = join(DOCKER_PLUGIN_DIR, `${plugin}.sock`);
const ipamDir = join(base, "ipam");
const dockerDir = join(base, "dock");
const table = prefix;
const bridge = `${prefix}br`;
const third = 1 + Math.floor(Math.random() * 250);
const subnet = `10.197.${third}.0/24`;

let engine: DockerEngine;
let child: ChildProcess | undefined;
let childLog = "";

async function startPlugin(): Promise<ChildProcess> {
  const args = ["--csi-dir", join(base, "csi"), "--docker-dir", dockerDir, "--ipam-dir", ipamDir, "--nft-table", table];
  args.push("--overlay-run-dir", join(base, "no-agent"));
  const plugin = await startDockerPlugin({ socket, args, onOutput: (text) => (childLog += text) });
  return plugin.child;
}

/** `docker network create` of a berth network (and berth IPAM) on the test's subnet, with `-o` options. */
const networkCreate = (name: string, ...options: string[]) => berthNetworkCreate(plugin, subnet, name, options);

/** `docker run -d` of a container on `network`, with `flags` before the image. */
function runOn(name: string, network: string, flags: string[], ...command: string[]): string[] {
  return ["run", "-d", "--name", name, "--network", network, ...flags, engine.image, ...command];
}

const SLEEP = ["sleep", "600"];

async function call(endpoint: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await httpOverUnix(socket, endpoint, {
    method: "POST",
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: r.status, json: JSON.parse(r.body) as Record<string, unknown> };
}

function leases(): { ip: string; network: string }[] {
  const db = new Database(join(ipamDir, "ipam.db"), { readonly: true });
  try {
    return db.prepare("SELECT ip, network FROM leases WHERE network LIKE 'berth-pool:%'").all() as {
      ip: string;
      network: string;
    }[];
  } finally {
    db.close();
  }
}

/** Every element of our portmap maps, as nft prints them. */
function portmapElements(): string[] {
  let out: string;
  try {
    out = execFileSync("nft", ["-j", "list", "table", "inet", table], { encoding: "utf8" });
  } catch {
    return []; // no table yet
  }
  const found: string[] = [];
  for (const item of (JSON.parse(out) as { nftables: Record<string, { name?: string; elem?: unknown[] }>[] }).nftables) {
    const set = item.map ?? item.set;
    if (set?.elem?.length) found.push(...set.elem.map((e) => `${set.name} ${JSON.stringify(e)}`));
  }
  return found;
}

function links(): { ifname: string; master?: string }[] {
  return ipJson(["link", "show"]);
}

async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "0.0.0.0", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => done(port));
    });
  });
}

function httpGet(url: string): Promise<string> {
  return new Promise((done, fail) => {
    const req = get(url, { timeout: 3000 }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => {
        text += d;
      });
      res.on("end", () => done(text));
    });
    req.on("timeout", () => req.destroy(new Error(`${url}: timed out`)));
    req.on("error", fail);
  });
}

async function ipOf(container: string): Promise<string> {
  const out = await engine.docker(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container]);
  return out.stdout.trim();
}

describe.skipIf(missing.length > 0)(
  `Docker Engine networks through berth docker-plugin${missing.length ? ` (missing: ${missing.join(", ")})` : ""}`,
  () => {
    beforeAll(async () => {
      rmSync(socket, { force: true });
      // The plugin first: dockerd activates a legacy plugin once and keeps what it implements.
      child = await startPlugin();
      engine = await startDockerd(join(base, "engine"));
    }, 120_000);

    afterAll(async () => {
      await engine?.cleanup();
      await stopDockerPlugin(child);
      rmSync(socket, { force: true });
      try {
        execFileSync("nft", ["delete", "table", "inet", table], { stdio: "ignore" });
      } catch {}
      try {
        execFileSync("ip", ["link", "del", bridge], { stdio: "ignore" });
      } catch {}
      teardownKernelObjects(base);
      rmSync(base, { recursive: true, force: true });
    }, 120_000);

    it("activates as all three drivers, each of local scope", async () => {
      expect((await call("/Plugin.Activate", "")).json).toEqual({ Implements: ["VolumeDriver", "NetworkDriver", "IpamDriver"] });
      expect((await call("/NetworkDriver.GetCapabilities", {})).json).toEqual({ Scope: "local", ConnectivityScope: "local" });
      expect((await call("/IpamDriver.GetCapabilities", {})).json).toEqual({
        RequiresMACAddress: false,
        RequiresRequestReplay: false,
      });
    });

    it("runs two containers on a berth network that ping each other, with addresses leased in berth's store; -p reaches a container from the host; docker network rm leaves no link, lease or nftables element", async () => {
      await engine.docker(networkCreate("n1", `berth.bridge=${bridge}`));
      const br = links().find((l) => l.ifname === bridge);
      expect(br).toBeDefined();
      expect(ipJson(["-4", "addr", "show", "dev", bridge])[0].addr_info.map((a: { local: string }) => a.local)).toEqual([
        `10.197.${third}.1`,
      ]);

      const port = await freePort();
      await engine.docker(runOn(`${prefix}a`, "n1", [], ...SLEEP));
      await engine.docker(
        runOn(
          `${prefix}w`,
          "n1",
          ["-p", `${port}:80`],
          "sh",
          "-c",
          "echo served-by-w > /tmp/index.html; exec httpd -f -p 80 -h /tmp",
        ),
      );
      const a = await ipOf(`${prefix}a`);
      const w = await ipOf(`${prefix}w`);
      expect(a).toMatch(new RegExp(`^10\\.197\\.${third}\\.\\d+$`));
      expect(w).toMatch(new RegExp(`^10\\.197\\.${third}\\.\\d+$`));
      expect(
        leases()
          .map((l) => l.ip)
          .sort(),
      ).toEqual([a, w].sort());
      // Each container's host-side veth is a port of the bridge.
      expect(links().filter((l) => l.master === bridge)).toHaveLength(2);

      const ping = await engine.docker(["exec", `${prefix}a`, "ping", "-c", "2", "-W", "2", w]);
      expect(ping.stdout).toContain("2 packets received");
      const back = await engine.docker(["exec", `${prefix}w`, "ping", "-c", "1", "-W", "2", a]);
      expect(back.stdout).toContain("1 packets received");

      expect(portmapElements().some((e) => e.includes(String(port)) && e.includes(w))).toBe(true);
      await until(
        () => httpGet(`http://10.197.${third}.1:${port}/index.html`),
        (t) => t.trim() === "served-by-w",
        "the published port through the bridge's address",
        10_000,
        200,
      );
      expect((await httpGet(`http://127.0.0.1:${port}/index.html`)).trim()).toBe("served-by-w");

      await engine.docker(["rm", "-f", `${prefix}a`, `${prefix}w`]);
      expect(portmapElements()).toEqual([]);
      expect(links().filter((l) => l.master === bridge)).toEqual([]);
      expect(leases()).toEqual([]);
      await engine.docker(["network", "rm", "n1"]);
      expect(links().filter((l) => l.ifname === bridge)).toEqual([]);
      const state = new Database(join(dockerDir, "network.db"), { readonly: true });
      try {
        expect(
          state
            .prepare(
              "SELECT (SELECT count(*) FROM networks) + (SELECT count(*) FROM endpoints) + (SELECT count(*) FROM pools) AS n",
            )
            .get(),
        ).toEqual({ n: 0 });
      } finally {
        state.close();
      }
    });

    it("a host port already published makes the next container fail with the reason, and its address, veth and elements are released", async () => {
      await engine.docker(networkCreate("n3", `berth.bridge=${bridge}`));
      const port = await freePort();
      await engine.docker(runOn(`${prefix}p`, "n3", ["-p", `${port}:80`], ...SLEEP));
      const first = await ipOf(`${prefix}p`);
      const elements = portmapElements();
      const second = await engine.tryDocker(runOn(`${prefix}q`, "n3", ["-p", `${port}:80`], ...SLEEP));
      expect(second.code).not.toBe(0);
      expect(second.stderr).toContain(
        `publish ports: host port ${port}/tcp is already mapped to ${first} . 80 by another attachment`,
      );
      // Only the first container's lease, veth and elements remain.
      expect(leases().map((l) => l.ip)).toEqual([first]);
      expect(links().filter((l) => l.master === bridge)).toHaveLength(1);
      expect(portmapElements()).toEqual(elements);
      await engine.docker(["rm", "-f", `${prefix}p`, `${prefix}q`]);
      await engine.docker(["network", "rm", "n3"]);
      expect(leases()).toEqual([]);
      expect(portmapElements()).toEqual([]);
    });

    it("cleans up at its next start what a container removed while the plugin was down held: veth pair, lease, port mapping, volume mount", {
      timeout: 240_000,
    }, async () => {
      await engine.docker(networkCreate("n2", `berth.bridge=${bridge}`));
      await engine.docker(["volume", "create", "-d", plugin, "--opt", "size=32M", "v9"]);
      const port = await freePort();
      await engine.docker(runOn(`${prefix}d`, "n2", ["-p", `${port}:80`, "-v", "v9:/data"], ...SLEEP));
      const addr = await ipOf(`${prefix}d`);
      const mountpoint = JSON.parse((await engine.docker(["volume", "inspect", "v9"])).stdout)[0].Mountpoint as string;
      expect(mountpoint).not.toBe("");
      expect(leases().map((l) => l.ip)).toEqual([addr]);
      expect(portmapElements().length).toBeGreaterThan(0);

      await stopDockerPlugin(child, "SIGKILL");
      // Docker retries each call to the dead plugin for a while, logs the failures and removes the container anyway.
      await engine.docker(["rm", "-f", `${prefix}d`], 200_000);
      expect(leases().map((l) => l.ip)).toEqual([addr]); // nobody released it
      expect(portmapElements().length).toBeGreaterThan(0);

      child = await startPlugin();
      expect(leases()).toEqual([]);
      expect(portmapElements()).toEqual([]);
      expect(links().filter((l) => l.master === bridge)).toEqual([]);
      expect(links().filter((l) => /^b[vc]/.test(l.ifname) && l.ifname.length === 14 && childLog.includes(l.ifname))).toEqual([]);
      expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(mountpoint);
      expect(JSON.parse((await engine.docker(["volume", "inspect", "v9"])).stdout)[0].Status.users).toBe(0);
      expect(childLog).toContain("docker endpoint of a container removed while the plugin was down: released");
      expect(childLog).toContain("docker volume released: no container holds it any more");
      await engine.docker(["volume", "rm", "v9"]);
      await engine.docker(["network", "rm", "n2"]);
      expect(links().filter((l) => l.ifname === bridge)).toEqual([]);
    });

    it("answers bad input with a clear Err and creates nothing", async () => {
      // Links this plugin would make (bd* bridges, bc* container ends); other tests' links come and go.
      const ours = () =>
        links()
          .map((l) => l.ifname)
          .filter((n) => /^b[dc]/.test(n) || n === bridge)
          .sort();
      const before = ours();
      const noSubnet = await engine.tryDocker(["network", "create", "-d", plugin, "--ipam-driver", plugin, "bad1"]);
      expect(noSubnet.code).not.toBe(0);
      expect(noSubnet.stderr).toContain("berth IPAM needs the network's subnet: docker network create --subnet CIDR");
      const badOpt = await engine.tryDocker(networkCreate("bad2", "bogus=1"));
      expect(badOpt.code).not.toBe(0);
      expect(badOpt.stderr).toContain('unknown network option "bogus" (known: berth.bridge, berth.mtu, berth.overlay)');
      const badMtu = await engine.tryDocker(networkCreate("bad3", "berth.mtu=9"));
      expect(badMtu.stderr).toContain('option berth.mtu must be an integer 68-65535, got "9"');
      // Docker released what it asked the IPAM for when the network could not be made.
      expect(leases()).toEqual([]);
      expect((await engine.docker(["network", "ls", "-q", "--filter", `driver=${plugin}`])).stdout.trim()).toBe("");
      expect(ours()).toEqual(before);

      const nid = "a".repeat(64);
      const eid = "b".repeat(64);
      const cases: [string, unknown, number, RegExp][] = [
        [
          "/NetworkDriver.Join",
          { NetworkID: nid, EndpointID: eid, SandboxKey: "/var/run/docker/netns/x" },
          404,
          /^no such endpoint: bbbbbbbbbbbb$/,
        ],
        [
          "/NetworkDriver.CreateEndpoint",
          { NetworkID: nid, EndpointID: eid, Interface: { Address: "10.0.0.2/24" } },
          404,
          /^no such network: aaaaaaaaaaaa$/,
        ],
        [
          "/NetworkDriver.DeleteNetwork",
          { NetworkID: "../../etc" },
          400,
          /^NetworkID "..\/..\/etc" is not a Docker id \(64 hex digits\)$/,
        ],
        [
          "/NetworkDriver.EndpointOperInfo",
          { NetworkID: nid },
          400,
          /invalid request: body must have required property 'EndpointID'$/,
        ],
        ["/NetworkDriver.CreateNetwork", "{oops", 400, /request body is not JSON$/],
        ["/IpamDriver.RequestAddress", { PoolID: "berth-pool:10.1.2.0/24" }, 404, /^unknown pool berth-pool:10.1.2.0\/24$/],
        ["/IpamDriver.RequestAddress", { PoolID: "../x" }, 404, /^unknown pool "..\/x"$/],
        ["/IpamDriver.RequestPool", { Pool: "10.1.2.3/24" }, 400, /has host bits set/],
        ["/IpamDriver.RequestPool", { Pool: "banana" }, 400, /^Pool "banana" is not a CIDR/],
        ["/NetworkDriver.AllocateNetwork", {}, 400, /local scope/],
      ];
      for (const [endpoint, body, status, want] of cases) {
        const r = await call(endpoint, body);
        const what = `${endpoint} ${JSON.stringify(body).slice(0, 60)}`;
        expect(r.status, what).toBe(status);
        expect(Object.keys(r.json), what).toEqual(["Err"]);
        expect(String(r.json.Err), what).toMatch(want);
      }
      expect(leases()).toEqual([]);
      expect(ours()).toEqual(before);
    });
  },
);
