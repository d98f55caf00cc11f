// The overlay on the Kubernetes API (`berth agent --store kube`): a real kube-apiserver on etcd,
// hosts in network namespaces, each with its own Node object (no kubelet behind them). Each
// agent takes its subnet from its Node's spec.podCIDR, publishes its VTEP as annotations, and
// programs the other Nodes as peers. The agents authenticate as a user bound to berth's own
// ClusterRole (deploy/kubernetes/10-rbac.yaml). Every check reads the kernel, the Node objects,
// or moves packets.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Cluster,
  type Container,
  type Host,
  KUBE_BIN,
  kubeBinariesPresent,
  run,
  unreachablePairs,
  until,
  waitAddressesSettled,
} from "../../testing/cluster.ts";

const CLUSTER_CIDR = "10.252.0.0/16";
const podCidr = (i: number) => `10.252.${i}.0/24`;

// The binaries come from ../shared/k8s (scripts/build.sh); CI builds them, so there the test
// must run. Elsewhere it says what is missing.
const present = kubeBinariesPresent();
if (!present && process.env.CI) throw new Error(`kube-apiserver/kubectl not found in ${KUBE_BIN} (BERTH_KUBE_BIN)`);

describe.skipIf(!present).sequential("overlay on the Kubernetes API", () => {
  let cluster: Cluster | undefined;
  let hosts: Host[] = [];
  const fail = (e: unknown): never => {
    throw new Error(`${(e as Error).message}\n${cluster?.logs()}`);
  };
  const containers = (): Container[] => hosts.flatMap((h) => h.containers);

  beforeAll(async () => {
    cluster = await Cluster.create({ store: "kube", clusterCidrs: [CLUSTER_CIDR], reconcileIntervalMs: 1000 }, (c) => {
      cluster = c;
    });
    try {
      for (let i = 1; i <= 3; i++) {
        const h = await cluster.addHost();
        await cluster.kube!.createNode(h.name, podCidr(i));
        h.startAgent();
      }
      hosts = [...cluster.hosts];
      await Promise.all(hosts.map((h) => h.waitReady(60_000)));
      for (const h of hosts) await h.addContainer();
      await Promise.all(containers().map(waitAddressesSettled));
    } catch (e) {
      fail(e);
    }
  }, 180_000);

  afterAll(async () => {
    await cluster?.destroy();
  });

  it("each agent takes its Node's podCIDR, publishes its VTEP on the Node, and pods reach each other", async () => {
    const kube = cluster!.kube!;
    for (const [i, h] of hosts.entries()) {
      expect((await h.lease()).subnet).toBe(podCidr(i + 1));
      const a = (await kube.node(h.name)).metadata.annotations ?? {};
      expect(a["berth.io/public-ip"]).toBe(h.underlayIP);
      expect(a["berth.io/vtep-mac"]).toBe((await h.device())!.address);
      expect(a["berth.io/vni"]).toBe("1");
      for (const c of h.containers) expect(c.ipv4.startsWith(`10.252.${i + 1}.`)).toBe(true);
    }
    expect(await unreachablePairs(containers(), 4)).toEqual([]);
  });

  it("a Node deleted: its routes, neighbours and FDB entries go from every other host", async () => {
    const gone = hosts[2]!;
    const mac = (await gone.device())!.address;
    await cluster!.kube!.kubectl(["delete", "node", gone.name]);
    for (const h of hosts.slice(0, 2)) {
      await until(
        `${h.name} drops ${gone.name}`,
        async () => ({
          routes: (await h.routes(4)).filter((r) => r.dst === podCidr(3)).length,
          fdb: (await h.fdb()).filter((f) => f.mac === mac).length,
          neigh: (await h.neighbours()).filter((n) => n.lladdr === mac).length,
        }),
        (v) => v.routes === 0 && v.fdb === 0 && v.neigh === 0,
        10_000,
        100,
      ).catch(fail);
    }
    // The other two still reach each other.
    expect(
      await unreachablePairs(
        hosts.slice(0, 2).flatMap((h) => h.containers),
        4,
      ),
    ).toEqual([]);
  });

  it("a Node's underlay address changes: the other hosts' FDB entries follow", async () => {
    const moved = hosts[1]!;
    const next = cluster!.underlayIP(200);
    await run("ip", ["-n", moved.ns, "addr", "add", `${next}/24`, "dev", moved.underlayIface]);
    await moved.stopAgent();
    moved.startAgent(["--public-ip", next]);
    await moved.waitReady(60_000);
    expect((await cluster!.kube!.node(moved.name)).metadata.annotations?.["berth.io/public-ip"]).toBe(next);
    const mac = (await moved.device())!.address;
    await until(
      `${hosts[0]!.name} sends to ${next}`,
      async () => (await hosts[0]!.fdb()).filter((f) => f.mac === mac).map((f) => f.dst),
      (dsts) => dsts.length === 1 && dsts[0] === next,
      10_000,
      100,
    ).catch(fail);
    expect(
      await unreachablePairs(
        hosts.slice(0, 2).flatMap((h) => h.containers),
        4,
      ),
    ).toEqual([]);
  });

  it("a Node without a podCIDR: the agent waits and says so in /readyz, then joins once one is set", async () => {
    const h = await cluster!.addHost();
    hosts.push(h);
    await cluster!.kube!.createNode(h.name);
    h.startAgent();
    const waiting = await until(
      "readyz names the missing podCIDR",
      () => h.api("/readyz").catch(() => ({ status: 0, body: "" })),
      (r) => r.status === 503 && /pod CIDR/.test(r.body),
      30_000,
      100,
    ).catch(fail);
    expect(waiting.body).toMatch(/pod CIDR/);
    const cidr = podCidr(4);
    await cluster!.kube!.kubectl(["patch", "node", h.name, "-p", JSON.stringify({ spec: { podCIDR: cidr, podCIDRs: [cidr] } })]);
    await h.waitReady(30_000);
    expect((await h.lease()).subnet).toBe(cidr);
    await h.addContainer();
    await waitAddressesSettled(h.containers[0]!);
    expect(await unreachablePairs([hosts[0]!.containers[0]!, h.containers[0]!], 4)).toEqual([]);
  });
});
