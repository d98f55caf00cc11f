// One host on the embedded store (`--store local`): the CNI plugin reports "not ready" in the
// spec's terms before the agent holds a lease (STATUS 50, ADD 11), then two containers on the
// host reach each other.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, type Host, tcpTransfer, unreachablePairs, until, waitAddressesSettled } from "../../testing/cluster.ts";

describe.sequential("overlay on the embedded store, one host", () => {
  let cluster: Cluster | undefined;
  let host: Host;

  beforeAll(async () => {
    cluster = await Cluster.create({ store: "local", clusterCidrs: ["10.251.0.0/16"] }, (c) => {
      cluster = c;
    });
    host = await cluster.addHost();
  });

  afterAll(async () => {
    await cluster?.destroy();
  });

  it("STATUS answers 50 and ADD 11 before the agent is up", async () => {
    const c = await host.containerNetns();
    const status = await host.cni("STATUS", c);
    expect(status.exitCode).not.toBe(0);
    expect(status.json?.code, status.stderr).toBe(50);
    const add = await host.cni("ADD", c);
    expect(add.exitCode).not.toBe(0);
    expect(add.json?.code, add.stderr).toBe(11);
    expect(add.json?.msg).toMatch(/not ready/);
  });

  it("STATUS answers 0 once the agent is up, and two containers reach each other", async () => {
    // debug: the agent logs each CNI call it serves, which tells the fast path from the cold one.
    host.startAgent(["--log-level", "debug"]);
    await host.waitReady();
    const c = await host.containerNetns();
    const status = await host.cni("STATUS", c);
    expect(status.exitCode, JSON.stringify(status.json)).toBe(0);
    const a = await host.attach(c);
    // The second one through the agent's CNI socket (the fast path): same outcome.
    const b = await host.addContainer({ fastPath: true });
    // The agent logs asynchronously (pino): the line may land just after the reply.
    const served = new RegExp(`served pid \\d+ berth-overlay ADD mh-${b.name} eth0: exit 0`);
    await until(
      "the agent's log of the fast-path ADD",
      async () => host.agent!.output(),
      (out) => served.test(out),
      5000,
    ).catch(() => {});
    expect(host.agent!.output()).toMatch(served);
    expect(host.agent!.output()).not.toMatch(new RegExp(`ADD mh-${a.name} `));
    await Promise.all([a, b].map(waitAddressesSettled));
    const lease = await host.lease();
    const subnetHead = lease.subnet.split(".").slice(0, 3).join(".");
    expect(a.ipv4.startsWith(`${subnetHead}.`)).toBe(true);
    expect(b.ipv4.startsWith(`${subnetHead}.`)).toBe(true);
    expect(await unreachablePairs([a, b])).toEqual([]);
    const t = await tcpTransfer(a, b, 1 << 20);
    expect(t.received).toBe(t.sent);
    // One host: the VXLAN device exists but has no peers to program.
    expect(await host.fdb()).toEqual([]);
    expect(await host.routes(4)).toEqual([]);
  });
});
