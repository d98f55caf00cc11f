// berth-firewall chained after berth-bridge: elements read back with `nft -j`, and the
// ingress policies checked with real traffic between pods on two bridges (br_netfilter is on).
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChainFixture } from "../../../testing/chain-fixture.ts";
import { ping } from "../../../testing/kernel.ts";
import type { Result } from "../../protocol/types.ts";
import { firewallPlugin } from "./firewall.ts";

let fx: ChainFixture;
let other: ChainFixture;
beforeEach(() => {
  fx = new ChainFixture("fwa");
  other = new ChainFixture("fwb", fx.table);
});
afterEach(() => {
  other.cleanup();
  fx.cleanup();
});

function fwConf(f: ChainFixture, extra: Record<string, unknown>, prev?: Result) {
  return f.metaConf("berth-firewall", extra, prev);
}

function podSet(): { key: unknown; comment?: string }[] {
  const out: { key: unknown; comment?: string }[] = [];
  for (const o of fx.nftTable()) {
    if (o.set?.name !== "fw_pods4" && o.set?.name !== "fw_pods6") continue;
    for (const e of o.set.elem ?? []) out.push(e.elem ? { key: e.elem.val, comment: e.elem.comment } : { key: e });
  }
  return out;
}

const ipOf = (r: Result) => r.ips![0]!.address.split("/")[0]!;

describe("berth-firewall", () => {
  it("ADD accepts the pod's addresses in the forward hook; CHECK; DEL removes them (idempotent); GC drops stale ones", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const add = await fx.invoke(firewallPlugin, fx.env("ADD", "ctr-a", ns), fwConf(fx, {}, prev));
    expect(add.exitCode, JSON.stringify(add.json)).toBe(0);
    expect(add.json).toEqual(prev);
    expect(podSet()).toEqual([{ key: ipOf(prev), comment: expect.stringMatching(/^[0-9a-f]{12} [0-9a-f]{20}$/) }]);
    const chain = fx.nftTable().find((o) => o.chain?.name === "fw_forward")?.chain;
    expect(chain).toMatchObject({ type: "filter", hook: "forward", policy: "accept" });
    expect((await fx.invoke(firewallPlugin, fx.env("CHECK", "ctr-a", ns), fwConf(fx, {}, prev))).exitCode).toBe(0);

    expect((await fx.invoke(firewallPlugin, fx.env("DEL", "ctr-a", ns), fwConf(fx, {}, prev))).exitCode).toBe(0);
    expect(podSet()).toEqual([]);
    const check = await fx.invoke(firewallPlugin, fx.env("CHECK", "ctr-a", ns), fwConf(fx, {}, prev));
    expect(check.json.msg).toMatch(/firewall acceptance for .* is missing/);
    expect((await fx.invoke(firewallPlugin, fx.env("DEL", "ctr-a", undefined), fwConf(fx, {}))).exitCode).toBe(0);

    const nsB = fx.netns("b");
    const prevB = await fx.bridgeAdd("ctr-b", nsB);
    for (const [cid, n, p] of [
      ["ctr-a", ns, prev],
      ["ctr-b", nsB, prevB],
    ] as const) {
      expect((await fx.invoke(firewallPlugin, fx.env("ADD", cid, n), fwConf(fx, {}, p))).exitCode).toBe(0);
    }
    const gc = await fx.invoke(
      firewallPlugin,
      { CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin" },
      {
        ...fwConf(fx, {}),
        "cni.dev/valid-attachments": [{ containerID: "ctr-b", ifname: "eth0" }],
      },
    );
    expect(gc.exitCode, JSON.stringify(gc.json)).toBe(0);
    expect(podSet().map((e) => e.key)).toEqual([ipOf(prevB)]);
  });

  it("same-bridge drops traffic between isolated bridges but not within one; isolated drops it within the bridge too", async () => {
    const routed = { isDefaultGateway: true };
    const a1 = fx.netns("a1");
    const a2 = fx.netns("a2");
    const b1 = other.netns("b1");
    const pa1 = await fx.bridgeAdd("a1", a1, "eth0", routed);
    const pa2 = await fx.bridgeAdd("a2", a2, "eth0", routed);
    const pb1 = await other.bridgeAdd("b1", b1, "eth0", routed);
    // Open: the host routes between the two bridges.
    expect(ping(a1, ipOf(pb1), 1)).toBe(true);

    for (const [f, cid, n, p] of [
      [fx, "a1", a1, pa1],
      [fx, "a2", a2, pa2],
      [other, "b1", b1, pb1],
    ] as const) {
      const r = await f.invoke(firewallPlugin, f.env("ADD", cid, n), fwConf(f, { ingressPolicy: "same-bridge" }, p));
      expect(r.exitCode, JSON.stringify(r.json)).toBe(0);
    }
    expect(ping(a1, ipOf(pb1), 1)).toBe(false);
    expect(ping(b1, ipOf(pa1), 1)).toBe(false);
    expect(ping(a1, ipOf(pa2), 1)).toBe(true);
    expect(ping(a1, fx.gateway, 1)).toBe(true);
    expect(
      (await fx.invoke(firewallPlugin, fx.env("CHECK", "a1", a1), fwConf(fx, { ingressPolicy: "same-bridge" }, pa1))).exitCode,
    ).toBe(0);

    const iso = await fx.invoke(firewallPlugin, fx.env("ADD", "a1", a1), fwConf(fx, { ingressPolicy: "isolated" }, pa1));
    expect(iso.exitCode, JSON.stringify(iso.json)).toBe(0);
    expect(ping(a1, ipOf(pa2), 1)).toBe(false);
    expect(ping(a1, fx.gateway, 1)).toBe(true);
  });

  it("refuses the iptables/firewalld backends (2) and a non-bridge chain for same-bridge (7)", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const ipt = await fx.invoke(firewallPlugin, fx.env("ADD", "ctr-a", ns), fwConf(fx, { backend: "firewalld" }, prev));
    expect(ipt.json.code).toBe(2);
    expect(ipt.json.msg).toContain('"backend"');
    const noBridge = { ...prev, interfaces: prev.interfaces!.slice(2) };
    const r = await fx.invoke(firewallPlugin, fx.env("ADD", "ctr-a", ns), fwConf(fx, { ingressPolicy: "same-bridge" }, noBridge));
    expect(r.json.code).toBe(7);
    expect(r.json.msg).toContain("needs a bridge");
    const bad = await fx.invoke(firewallPlugin, fx.env("ADD", "ctr-a", ns), fwConf(fx, { ingressPolicy: "closed" }, prev));
    expect(bad.json.code).toBe(7);
  });
});
