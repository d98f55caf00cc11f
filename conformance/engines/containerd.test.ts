// containerd 1.6's CRI (the path Kubernetes takes) running pod sandboxes on a berth network
// written by `berth install`: the chain berth-bridge (+ berth-host-local) → berth-portmap →
// berth-firewall → berth-bandwidth, from the installed CNI bin dir (with the reference
// `loopback`, which the CRI plugin always runs). Two pods get their addresses from berth, reach
// each other and the host, a port_mappings entry reaches a pod from the host, and Stop/Remove
// leave no link, lease or nftables element. Once on the cold path (every plugin a fresh Node)
// and once with `berth cni-server` answering (the fast path), where every call of the chain
// must be served by it. Pod B asks for bandwidth limits by annotation, so containerd sends
// Go-cased IngressRate/EgressRate as well as Go-cased port mappings.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Containerd, inNetns, installBerthChain, missingForContainerd, removeDir } from "../../testing/containerd.ts";
import { ipJson, sh, testPrefix } from "../../testing/kernel.ts";
import { leaseRows } from "../../testing/leases.ts";
import { until } from "../../testing/poll.ts";
import { ServerProcess } from "../fastpath/server-process.ts";

const missing = missingForContainerd();
if (missing.length > 0) console.warn(`SKIPPED: containerd CRI engine tests — missing ${missing.join(", ")}`);

/** What a TCP peer sends on connect (the pod's server answers with its name and closes). */
function readFrom(host: string, port: number): Promise<string> {
  return new Promise((done, fail) => {
    const s = connect({ host, port, timeout: 3000 });
    let got = "";
    s.on("data", (b) => {
      got += b.toString();
    });
    s.on("end", () => done(got));
    s.on("timeout", () => {
      s.destroy();
      fail(new Error(`${host}:${port}: timed out`));
    });
    s.on("error", fail);
  });
}

function pingFrom(netnsPath: string | undefined, ip: string): boolean {
  const argv = ["busybox", "ping", "-c1", "-W2", ip];
  for (let i = 0; i < 3; i++) {
    try {
      execFileSync(netnsPath ? "nsenter" : argv[0]!, netnsPath ? [`--net=${netnsPath}`, "--", ...argv] : argv.slice(1), {
        stdio: "ignore",
        timeout: 5000,
      });
      return true;
    } catch {
      // a lost first packet on a busy machine; unreachable fails every time
    }
  }
  return false;
}

/** Every element of every set and map of berth's inet table, as JSON text ("" when the table is gone). */
function nftElements(table: string): string {
  let doc: { nftables: { set?: { elem?: unknown[] }; map?: { elem?: unknown[] } }[] };
  try {
    doc = JSON.parse(sh("nft", ["-j", "list", "table", "inet", table]));
  } catch {
    return "";
  }
  return JSON.stringify(doc.nftables.flatMap((o) => (o.set ?? o.map)?.elem ?? []));
}

/** Host links named with this run's prefix (the bridge, berth-bandwidth's IFBs) and the bridge's ports. */
function networkLinks(chain: { prefix: string; bridge: string }): { tagged: string[]; ports: string[] } {
  const all = ipJson<{ ifname: string; master?: string }>(["link", "show"]);
  return {
    tagged: all.map((l) => l.ifname).filter((n) => n.startsWith(chain.prefix) && n !== chain.bridge),
    ports: all.filter((l) => l.master === chain.bridge).map((l) => l.ifname),
  };
}

describe.skipIf(missing.length > 0).sequential("containerd 1.6 CRI runs pods on berth", () => {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-cri-`));
  let chain: Awaited<ReturnType<typeof installBerthChain>>;

  beforeAll(async () => {
    chain = await installBerthChain(dir);
  }, 120_000);

  afterAll(async () => {
    await chain?.cleanup();
    await removeDir(dir);
  });

  for (const path of ["cold", "fast"] as const) {
    it(`${path} path: two pods get berth addresses, reach each other and the host, a hostPort reaches one, and nothing is left after removal`, {
      timeout: 180_000,
    }, async () => {
      const cniSocket = join(dir, `${path}-cni.sock`);
      const server = path === "fast" ? await ServerProcess.start(cniSocket) : undefined;
      const cd = await Containerd.start({
        dir: join(dir, `containerd-${path}`),
        cniBinDir: chain.binDir,
        cniConfDir: chain.confDir,
        env: { BERTH_CNI_SOCKET: path === "fast" ? cniSocket : "off" },
        image: chain.image,
      });
      const listener = { kill: () => {} };
      try {
        const hostPort = 20000 + Math.floor(Math.random() * 20000);
        const a = await cd.cri.runPod({
          name: `${chain.prefix}-a`,
          uid: `${chain.prefix}-${path}-a`,
          port_mappings: [{ protocol: "TCP", container_port: 8080, host_port: hostPort }],
        });
        const b = await cd.cri.runPod({
          name: `${chain.prefix}-b`,
          uid: `${chain.prefix}-${path}-b`,
          annotations: { "kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "10M" },
        });
        const sa = await cd.cri.status(a);
        const sb = await cd.cri.status(b);
        expect(sa.state).toBe("SANDBOX_READY");
        expect(sb.state).toBe("SANDBOX_READY");
        // Addresses from berth's pool, and berth's lease database holds exactly these two.
        expect(sa.ip.startsWith(`${chain.base}.`), cd.output()).toBe(true);
        expect(sb.ip.startsWith(`${chain.base}.`)).toBe(true);
        expect(sa.ip).not.toBe(sb.ip);
        expect(leaseRows(chain.dataDir, chain.network)).toEqual(
          [
            { ip: sa.ip, container_id: a },
            { ip: sb.ip, container_id: b },
          ].sort((x, y) => (x.ip < y.ip ? -1 : 1)),
        );
        const eth0 = (await inNetns(sa.netnsPath, ["ip", "-j", "addr", "show", "dev", "eth0"])).stdout;
        expect(eth0).toContain(`"local":"${sa.ip}"`);

        // The pods reach each other and the host (the bridge's gateway); the host reaches them.
        expect(pingFrom(sa.netnsPath, sb.ip)).toBe(true);
        expect(pingFrom(sb.netnsPath, sa.ip)).toBe(true);
        expect(pingFrom(sa.netnsPath, chain.gateway)).toBe(true);
        expect(pingFrom(undefined, sb.ip)).toBe(true);
        // One veth per pod on the bridge; pod B's bandwidth limit made its IFB.
        const running = networkLinks(chain);
        expect(running.ports).toHaveLength(2);
        expect(running.tagged, "berth-bandwidth's IFB for pod B").toHaveLength(1);

        // A server inside pod A answers on its hostPort from the host.
        const srv = spawn(
          "nsenter",
          [
            `--net=${sa.netnsPath}`,
            "--",
            process.execPath,
            "-e",
            'require("net").createServer((c) => c.end("hello from a\\n")).listen(8080, () => console.log("ready"))',
          ],
          { stdio: ["ignore", "pipe", "inherit"] },
        );
        listener.kill = () => srv.kill("SIGKILL");
        await new Promise<void>((done, fail) => {
          srv.stdout!.once("data", () => done());
          srv.once("exit", (c) => fail(new Error(`pod server exited with ${c}`)));
        });
        expect(await readFrom(chain.gateway, hostPort)).toBe("hello from a\n");
        expect(await readFrom("127.0.0.1", hostPort)).toBe("hello from a\n");
        expect(nftElements(chain.table)).toContain(String(hostPort));
        listener.kill();

        if (server) {
          // The fast path: every plugin of the chain, for both pods, was answered by the server.
          const served = server.log.join("");
          // (IPAM runs inside the bridge plugin's call there, not through a launcher of its own.)
          for (const t of ["berth-bridge", "berth-portmap", "berth-firewall", "berth-bandwidth"]) {
            for (const id of [a, b]) expect(served, `${t} ADD ${id}`).toMatch(new RegExp(`served pid \\d+ ${t} ADD ${id} `));
          }
        }

        for (const id of [a, b]) {
          await cd.cri.stopPod(id);
          await cd.cri.removePod(id);
        }
        // Nothing of either pod is left: links, leases, nftables elements.
        // (The fast path deletes a DEL's links in the background, right after answering.)
        const gone = await until(
          () => networkLinks(chain),
          (l) => l.tagged.length === 0 && !l.ports.some((p) => running.ports.includes(p)),
          "the pods' links deleted",
          5000,
        ).catch((e: Error) => e.message);
        expect(gone).toEqual({ tagged: [], ports: [] });
        expect(leaseRows(chain.dataDir, chain.network)).toEqual([]);
        const elements = nftElements(chain.table);
        for (const v of [sa.ip, sb.ip, String(hostPort)]) expect(elements).not.toContain(v);
        if (server) expect(server.log.join("")).toMatch(new RegExp(`served pid \\d+ berth-bridge DEL ${a} `));
      } finally {
        listener.kill();
        await cd.stop();
        await server?.stop();
      }
    });
  }
});
