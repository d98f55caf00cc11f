// Docker across hosts without Swarm: two "hosts" (network namespaces on one underlay, as the
// multi-host suite builds them) each run a berth agent on a real etcd, a berth docker-plugin
// and their own dockerd. `docker network create -d <plugin> --ipam-driver <plugin>
// -o berth.overlay=true` on each host makes a network on that host's leased subnet, and a
// container on host 1 reaches a container on host 2 over the VXLAN overlay.
import type { ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, type Host, ipJson } from "../../testing/cluster.ts";
import {
  DOCKER_PLUGIN_DIR,
  type DockerEngine,
  missingForDockerTest,
  startDockerd,
  startDockerPlugin,
} from "../../testing/docker.ts";
import { teardownKernelObjects } from "../../testing/storage.ts";

const _ROOT = resolve(import.meta.dirname, "../..");
const missing = missingForDockerTest();

interface DockerHost {
  host: Host;
  plugin: string;
  socket: string;
  child: ChildProcess;
  readonly log: string;
  /** Unset until dockerd answers; the entry exists before, so cleanup stops the plugin anyway. */
  engine?: DockerEngine;
  dir: string;
}

async function startPlugin(
  h: Host,
  plugin: string,
  dir: string,
): Promise<{ child: ChildProcess; socket: string; log: () => string }> {
  const socket = join(DOCKER_PLUGIN_DIR, `${plugin}.sock`);
  rmSync(socket, { force: true });
  const args = ["--csi-dir", join(dir, "csi"), "--docker-dir", join(dir, "dock"), "--ipam-dir", join(dir, "ipam")];
  args.push("--overlay-run-dir", h.runDir, "--overlay-data-dir", h.cniDataDir);
  const { child, log } = await startDockerPlugin({ socket, args, netns: h.ns });
  return { child, socket, log };
}

describe.skipIf(missing.length > 0)(
  `Docker across two hosts on the berth overlay${missing.length ? ` (missing: ${missing.join(", ")})` : ""}`,
  () => {
    let cluster: Cluster | undefined;
    const hosts: DockerHost[] = [];

    beforeAll(async () => {
      cluster = await Cluster.create({ store: "etcd", clusterCidrs: ["10.251.0.0/16"] }, (c) => {
        cluster = c;
      });
      for (let i = 0; i < 2; i++) {
        const h = await cluster.addHost();
        h.startAgent();
        await h.waitReady();
        const dir = `/tmp/${cluster.prefix}-docker-h${i + 1}`;
        const plugin = `${cluster.prefix}h${i + 1}`;
        const p = await startPlugin(h, plugin, dir);
        const entry: DockerHost = {
          host: h,
          plugin,
          socket: p.socket,
          child: p.child,
          get log() {
            return p.log();
          },
          dir,
        };
        hosts.push(entry);
        entry.engine = await startDockerd(join(dir, "engine"), { netns: h.ns });
      }
    }, 180_000);

    afterAll(async () => {
      for (const d of hosts) {
        await d.engine?.cleanup().catch(() => undefined);
        if (d.child.pid && d.child.exitCode === null) {
          const exited = new Promise((r) => d.child.once("exit", r));
          d.child.kill("SIGTERM");
          await exited;
        }
        rmSync(d.socket, { force: true });
        teardownKernelObjects(d.dir);
        rmSync(d.dir, { recursive: true, force: true });
      }
      await cluster?.destroy();
    }, 180_000);

    it("a container on host 1 reaches a container on host 2 over VXLAN, each on its host's leased subnet, with no Swarm; a CNI pod shares host 1's bridge and lease store", async () => {
      const addresses: string[] = [];
      // A CNI pod (berth-overlay) on host 1 first: Docker's containers share its bridge and its lease store.
      const pod = await hosts[0]!.host.addContainer();
      for (const [i, d] of hosts.entries()) {
        const lease = await d.host.lease();
        const create = ["network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "-o", "berth.overlay=true"];
        if (i === 0) {
          // Host 1's bridge already routes its subnet (the CNI pod): Docker then wants it named.
          const unnamed = await d.engine!.tryDocker([...create, "n1"]);
          expect(unnamed.stderr).toContain(
            `this host's overlay subnet ${lease.subnet} is already routed here (berth-overlay's bridge), so Docker asked for another pool; name it: --subnet ${lease.subnet}`,
          );
          await d.engine!.docker([...create, "--subnet", lease.subnet, "n1"]);
        } else {
          await d.engine!.docker([...create, "n1"]);
        }
        await d.engine!.docker(["run", "-d", "--name", `c${i + 1}`, "--network", "n1", d.engine!.image, "sleep", "600"]);
        const ip = (
          await d.engine!.docker(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", `c${i + 1}`])
        ).stdout.trim();
        const [net, bits] = lease.subnet.split("/");
        expect(bits, d.log).toBe("24");
        expect(ip.split(".").slice(0, 3).join("."), `${ip} in ${lease.subnet}`).toBe(net!.split(".").slice(0, 3).join("."));
        addresses.push(ip);
        // berth-overlay's bridge carries the gateway; the container's link has the overlay MTU.
        const br = await ipJson<{ addr_info: { local: string }[] }>(d.host.ns, ["-4", "addr", "show", "dev", "berth0"]);
        expect(br[0]?.addr_info.map((a) => a.local)).toContain(`${net!.split(".").slice(0, 3).join(".")}.1`);
        const mtu = (await d.engine!.docker(["exec", `c${i + 1}`, "cat", "/sys/class/net/eth0/mtu"])).stdout.trim();
        expect(Number(mtu)).toBe(1450);
      }
      expect(addresses[0]).not.toBe(pod.ipv4);
      const store = new Database(join(hosts[0]!.host.cniDataDir, "ipam", "ipam.db"), { readonly: true });
      try {
        const held = (store.prepare("SELECT ip FROM leases").all() as { ip: string }[]).map((r) => r.ip).sort();
        expect(held).toEqual([addresses[0], pod.ipv4].sort());
      } finally {
        store.close();
      }
      const p = await hosts[0]!.engine!.docker(["exec", "c1", "ping", "-c", "3", "-W", "2", addresses[1]!]);
      expect(p.stdout).toContain("3 packets received");
      const back = await hosts[1]!.engine!.docker(["exec", "c2", "ping", "-c", "1", "-W", "2", addresses[0]!]);
      expect(back.stdout).toContain("1 packets received");
      const toPod = await hosts[1]!.engine!.docker(["exec", "c2", "ping", "-c", "1", "-W", "2", pod.ipv4]);
      expect(toPod.stdout).toContain("1 packets received");

      // A plain --subnet equal to the overlay subnet is refused, and so is overlay with another subnet.
      const d = hosts[0]!;
      const lease = await d.host.lease();
      const clash = await d.engine!.tryDocker([
        "network",
        "create",
        "-d",
        d.plugin,
        "--ipam-driver",
        d.plugin,
        "--subnet",
        "10.77.1.0/24",
        "-o",
        "berth.overlay=true",
        "bad",
      ]);
      expect(clash.stderr).toContain(`the subnet must be this host's overlay subnet ${lease.subnet}`);

      for (const [i, h] of hosts.entries()) {
        await h.engine!.docker(["rm", "-f", `c${i + 1}`]);
        await h.engine!.docker(["network", "rm", "n1"]);
      }
    });
  },
);
