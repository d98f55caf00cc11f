// `berth up --docker`: the agent, the CSI driver and the Docker plugin in one process, inside a
// throwaway host netns (testing/cluster.ts) with its own run, state, CSI and
// Docker dirs, and a private dockerd in the same netns using the plugin.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, type Host } from "../../testing/cluster.ts";
import { DOCKER_PLUGIN_DIR, type DockerEngine, missingForDockerTest, startDockerd } from "../../testing/docker.ts";
import { testPrefix } from "../../testing/kernel.ts";
import { httpOverUnix, until } from "../../testing/poll.ts";
import { teardownKernelObjects } from "../../testing/storage.ts";

const REPO = resolve(import.meta.dirname, "../..");
const missing = missingForDockerTest();

describe.skipIf(missing.length > 0).sequential("berth up --docker", () => {
  const prefix = testPrefix();
  // Made in beforeAll: a describe collected but filtered out must not leave it behind.
  let dir = "";
  const plugin = `${prefix}up`;
  const socket = join(DOCKER_PLUGIN_DIR, `${plugin}.sock`);
  let cluster: Cluster | undefined;
  let host: Host;
  let engine: DockerEngine | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `${prefix}-updocker-`));
    cluster = await Cluster.create(
      {
        store: "local",
        clusterCidrs: ["10.251.0.0/16"],
        agentCommand: [
          process.execPath,
          "--import",
          "tsx",
          join(REPO, "bin", "cli.ts"),
          "up",
          "--csi-endpoint",
          `unix://${join(dir, "csi.sock")}`,
          "--csi-dir",
          join(dir, "csi"),
          "--docker",
          "--docker-socket",
          socket,
        ],
      },
      (c) => {
        cluster = c;
      },
    );
    host = await cluster.addHost();
  }, 60_000);

  afterAll(async () => {
    await engine?.cleanup();
    await cluster?.destroy();
    rmSync(socket, { force: true });
    if (dir) {
      teardownKernelObjects(dir);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it("serves the Docker plugin beside the agent: a volume for a container, the IPAM's default pool is the agent's lease; Ctrl-C removes the socket", {
    timeout: 120_000,
  }, async () => {
    const agent = host.startAgent();
    await host.waitReady();
    await until(
      () => httpOverUnix(socket, "/Plugin.Activate", { method: "POST", body: "" }).then((r) => r.body),
      (b) => b.includes("VolumeDriver"),
      `the Docker plugin of berth up; output: ${agent.output().slice(-2000)}`,
      30_000,
      100,
    );
    expect(agent.output()).toContain(socket);
    // The plugin reads the agent's own run dir: with no subnet named, the pool is this host's lease.
    const lease = await host.lease();
    const pool = await httpOverUnix(socket, "/IpamDriver.RequestPool", {
      method: "POST",
      body: JSON.stringify({ AddressSpace: "berth-local" }),
    });
    expect(JSON.parse(pool.body)).toMatchObject({ Pool: lease.subnet });

    engine = await startDockerd(join(dir, "engine"), { netns: host.ns });
    await engine.docker(["volume", "create", "-d", plugin, "--opt", "size=32M", "v1"]);
    await engine.docker(["run", "--rm", "--network", "none", "-v", "v1:/data", engine.image, "sh", "-c", "echo up > /data/f"]);
    const r = await engine.docker(["run", "--rm", "--network", "none", "-v", "v1:/data", engine.image, "cat", "/data/f"]);
    expect(r.stdout.trim()).toBe("up");
    await engine.docker(["volume", "rm", "v1"]);

    await agent.stop("SIGINT");
    expect(await agent.exited, agent.output()).toBe(0);
    expect(existsSync(socket)).toBe(false);
  });
});
