// berth-bandwidth chained after berth-bridge: qdiscs and the IFB read back with `tc -j` and
// `ip -j -d`, and the limits measured with iperf3 between two pods on the bridge. berth programs
// them over netlink; `tc` here is only the independent reader (and the saboteur for CHECK).
import { type ChildProcess, spawn } from "node:child_process";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChainFixture } from "../../../testing/chain-fixture.ts";
import { delLink, ipJson, sh } from "../../../testing/kernel.ts";
import type { Result } from "../../protocol/types.ts";
import { bandwidthPlugin, ifbName } from "./bandwidth.ts";

let fx: ChainFixture;
const servers: ChildProcess[] = [];
beforeEach(() => {
  fx = new ChainFixture("bw");
});
afterEach(() => {
  for (const s of servers.splice(0)) if (s.pid && s.exitCode === null) process.kill(s.pid, "SIGKILL");
  fx.cleanup();
});

const MBIT = 1_000_000;

function bwConf(extra: Record<string, unknown>, prev?: Result) {
  return fx.metaConf("berth-bandwidth", { ifbPrefix: fx.prefix, ...extra }, prev);
}

// biome-ignore lint/suspicious/noExplicitAny: tc JSON
function qdiscs(dev: string): any[] {
  return JSON.parse(sh("tc", ["-j", "qdisc", "show", "dev", dev]) || "[]");
}

const hostVethOf = (r: Result) => r.interfaces![1]!.name;

describe("berth-bandwidth", () => {
  it("ADD puts a tbf on the host veth (ingress) and an IFB with a tbf behind a mirred redirect (egress); CHECK; DEL removes both; GC", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const veth = hostVethOf(prev);
    const limits = { ingressRate: 40 * MBIT, ingressBurst: 400_000, egressRate: 60 * MBIT, egressBurst: 600_000 };
    const add = await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", ns), bwConf(limits, prev));
    expect(add.exitCode, JSON.stringify(add.json)).toBe(0);
    expect(add.json).toEqual(prev);

    const ifb = ifbName(fx.prefix, fx.network, "ctr-a", "eth0");
    expect(qdiscs(veth)).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ kind: "tbf", root: true, options: expect.objectContaining({ rate: 5_000_000 }) }),
        expect.objectContaining({ kind: "ingress" }),
      ]),
    );
    const link = ipJson(["link", "show", ifb])[0];
    expect(link.linkinfo.info_kind).toBe("ifb");
    expect(link.flags).toContain("UP");
    expect(qdiscs(ifb)).toEqual([
      expect.objectContaining({ kind: "tbf", root: true, options: expect.objectContaining({ rate: 7_500_000 }) }),
    ]);
    const filters = JSON.parse(sh("tc", ["-j", "filter", "show", "dev", veth, "parent", "ffff:"]));
    expect(JSON.stringify(filters)).toContain(`"to_dev":"${ifb}"`);

    expect((await fx.invoke(bandwidthPlugin, fx.env("CHECK", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    const changed = await fx.invoke(
      bandwidthPlugin,
      fx.env("CHECK", "ctr-a", ns),
      bwConf({ ...limits, egressRate: 10 * MBIT }, prev),
    );
    expect(changed.json.msg).toMatch(/egress rate on .* is 60000000 bit\/s, configured 10000000/);
    // A repeated ADD converges instead of failing on existing qdiscs.
    const again = await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", ns), bwConf(limits, prev));
    expect(again.exitCode, JSON.stringify(again.json)).toBe(0);

    expect((await fx.invoke(bandwidthPlugin, fx.env("DEL", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    expect(ipJson(["link", "show"]).some((l) => l.ifname === ifb)).toBe(false);
    expect(qdiscs(veth).some((q) => q.kind === "tbf" || q.kind === "ingress")).toBe(false);
    expect((await fx.invoke(bandwidthPlugin, fx.env("DEL", "ctr-a", undefined), bwConf(limits))).exitCode).toBe(0);

    // GC: an IFB whose attachment is gone is deleted, a valid one stays.
    const nsB = fx.netns("b");
    const prevB = await fx.bridgeAdd("ctr-b", nsB);
    const egress = { egressRate: 10 * MBIT, egressBurst: 100_000 };
    expect((await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", ns), bwConf(egress, prev))).exitCode).toBe(0);
    expect((await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-b", nsB), bwConf(egress, prevB))).exitCode).toBe(0);
    const gc = await fx.invoke(
      bandwidthPlugin,
      { CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin" },
      {
        ...bwConf({}),
        "cni.dev/valid-attachments": [{ containerID: "ctr-b", ifname: "eth0" }],
      },
    );
    expect(gc.exitCode, JSON.stringify(gc.json)).toBe(0);
    const names = ipJson(["link", "show", "type", "ifb"]).map((l) => l.ifname);
    expect(names).toContain(ifbName(fx.prefix, fx.network, "ctr-b", "eth0"));
    expect(names).not.toContain(ifb);
    expect((await fx.invoke(bandwidthPlugin, fx.env("DEL", "ctr-b", nsB), bwConf(egress, prevB))).exitCode).toBe(0);
  });

  it("measured throughput stays within ±15% of the configured rate in both directions (iperf3, 3 s)", async () => {
    const nsA = fx.netns("a");
    const nsB = fx.netns("b");
    const prevA = await fx.bridgeAdd("ctr-a", nsA);
    const prevB = await fx.bridgeAdd("ctr-b", nsB);
    const rate = 50 * MBIT;
    const limits = { ingressRate: rate, ingressBurst: 512_000, egressRate: rate, egressBurst: 512_000 };
    expect((await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", nsA), bwConf(limits, prevA))).exitCode).toBe(0);
    const ipB = prevB.ips![0]!.address.split("/")[0]!;
    const port = String(20000 + Math.floor(Math.random() * 20000));
    const server = spawn("ip", ["netns", "exec", nsB, "iperf3", "-s", "-p", port], { stdio: "ignore" });
    servers.push(server);
    const measure = async (reverse: boolean): Promise<number> => {
      const args = ["netns", "exec", nsA, "iperf3", "-c", ipB, "-p", port, "-t", "3", "-J", ...(reverse ? ["-R"] : [])];
      for (let i = 0; ; i++) {
        try {
          return JSON.parse(sh("ip", args)).end.sum_received.bits_per_second as number;
        } catch (e) {
          if (i > 20) throw e; // server still starting
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    };
    const egress = await measure(false); // pod A sends: through the IFB's tbf
    const ingress = await measure(true); // pod A receives: through the host veth's tbf
    expect(egress).toBeGreaterThan(rate * 0.85);
    expect(egress).toBeLessThan(rate * 1.15);
    expect(ingress).toBeGreaterThan(rate * 0.85);
    expect(ingress).toBeLessThan(rate * 1.15);
  });

  it("refuses a rate without a burst and a chain without a veth (7); takes runtimeConfig.bandwidth when the config has none", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const half = await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", ns), bwConf({ ingressRate: MBIT }, prev));
    expect(half.json.code).toBe(7);
    expect(half.json.msg).toContain('"ingressRate" and "ingressBurst" must both be set');
    const noVeth = await fx.invoke(
      bandwidthPlugin,
      fx.env("ADD", "ctr-a", ns),
      bwConf({ ingressRate: MBIT, ingressBurst: 10_000 }, { ...prev, interfaces: prev.interfaces!.slice(2) }),
    );
    expect(noVeth.json.code).toBe(7);
    const bad = await fx.invoke(
      bandwidthPlugin,
      fx.env("ADD", "ctr-a", ns),
      bwConf({ runtimeConfig: { bandwidth: { egressRate: -1 } } }, prev),
    );
    expect(bad.json.msg).toContain('"runtimeConfig.bandwidth.egressRate"');
    const rt = await fx.invoke(
      bandwidthPlugin,
      fx.env("ADD", "ctr-a", ns),
      bwConf({ runtimeConfig: { bandwidth: { ingressRate: 8 * MBIT, ingressBurst: 80_000 } } }, prev),
    );
    expect(rt.exitCode, JSON.stringify(rt.json)).toBe(0);
    expect(qdiscs(hostVethOf(prev))).toEqual([
      expect.objectContaining({ kind: "tbf", options: expect.objectContaining({ rate: 1_000_000 }) }),
    ]);
  });

  it("refuses a burst below one full frame and a rate below 8 bit/s (7); CHECK catches a removed redirect and a changed burst", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const veth = hostVethOf(prev);
    const small = await fx.invoke(
      bandwidthPlugin,
      fx.env("ADD", "ctr-a", ns),
      bwConf({ egressRate: 10 * MBIT, egressBurst: 8 * 1000 }, prev),
    );
    expect(small.json.code).toBe(7);
    expect(small.json.msg).toMatch(
      /"egressBurst" 8000 bits is smaller than one full-size frame on .* \(MTU 1500 \+ 14 = 1514 bytes/,
    );
    const slow = await fx.invoke(
      bandwidthPlugin,
      fx.env("ADD", "ctr-a", ns),
      bwConf({ ingressRate: 7, ingressBurst: 100_000 }, prev),
    );
    expect(slow.json.msg).toContain('"ingressRate" must be at least 8 bit/s, got 7');
    // Nothing was programmed by the refused ADDs.
    expect(qdiscs(veth).some((q) => q.kind === "tbf" || q.kind === "ingress")).toBe(false);
    expect(ipJson(["link", "show", "type", "ifb"]).some((l) => l.ifname.startsWith(fx.prefix))).toBe(false);

    const limits = { ingressRate: 20 * MBIT, ingressBurst: 200_000, egressRate: 20 * MBIT, egressBurst: 200_000 };
    expect((await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    const burst = await fx.invoke(
      bandwidthPlugin,
      fx.env("CHECK", "ctr-a", ns),
      bwConf({ ...limits, ingressBurst: 400_000 }, prev),
    );
    expect(burst.json.msg).toMatch(/CHECK: ingress burst on .* is 2000\d\d bits, configured 400000/);
    sh("tc", ["filter", "del", "dev", veth, "parent", "ffff:"]);
    const check = await fx.invoke(bandwidthPlugin, fx.env("CHECK", "ctr-a", ns), bwConf(limits, prev));
    expect(check.json.msg).toMatch(/CHECK: traffic from the pod on .* is not redirected to /);
    // ADD repairs it.
    expect((await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    expect((await fx.invoke(bandwidthPlugin, fx.env("CHECK", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    expect((await fx.invoke(bandwidthPlugin, fx.env("DEL", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
  });

  it("DEL removes only its own redirect: another program's ingress filter, and so the ingress qdisc, stay", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const veth = hostVethOf(prev);
    const ifb = ifbName(fx.prefix, fx.network, "ctr-a", "eth0");
    const limits = { egressRate: 10 * MBIT, egressBurst: 100_000 };
    expect((await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    sh("tc", [
      ...["filter", "add", "dev", veth, "parent", "ffff:", "prio", "5", "protocol", "ip"],
      ...["u32", "match", "u32", "0", "0", "flowid", "1:1"],
    ]);
    const filters = () => JSON.parse(sh("tc", ["-j", "filter", "show", "dev", veth, "parent", "ffff:"]) || "[]");
    expect(new Set(filters().map((f: { pref: number }) => f.pref))).toEqual(new Set([1, 5]));
    expect((await fx.invoke(bandwidthPlugin, fx.env("DEL", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    expect(new Set(filters().map((f: { pref: number }) => f.pref))).toEqual(new Set([5]));
    expect(qdiscs(veth).map((q) => q.kind)).toContain("ingress");
    expect(ipJson<{ ifname: string }>(["link", "show"]).map((l) => l.ifname)).not.toContain(ifb);
    // Without the foreign filter, DEL takes the ingress qdisc too.
    expect((await fx.invoke(bandwidthPlugin, fx.env("ADD", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    sh("tc", ["filter", "del", "dev", veth, "parent", "ffff:", "prio", "5"]);
    expect((await fx.invoke(bandwidthPlugin, fx.env("DEL", "ctr-a", ns), bwConf(limits, prev))).exitCode).toBe(0);
    expect(qdiscs(veth).map((q) => q.kind)).not.toContain("ingress");
  });

  it("DEL leaves a root qdisc of another kind and a non-IFB device that carries the IFB's name", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const veth = hostVethOf(prev);
    const ifb = ifbName(fx.prefix, fx.network, "ctr-a", "eth0");
    sh("tc", ["qdisc", "replace", "dev", veth, "root", "handle", "5:", "pfifo"]);
    sh("ip", ["link", "add", ifb, "type", "bridge"]);
    try {
      expect((await fx.invoke(bandwidthPlugin, fx.env("DEL", "ctr-a", ns), bwConf({}, prev))).exitCode).toBe(0);
      expect(qdiscs(veth)).toEqual([expect.objectContaining({ kind: "pfifo", root: true })]);
      expect(ipJson(["link", "show", ifb])[0].linkinfo.info_kind).toBe("bridge");
      // ADD refuses to use it as the IFB, and its undo leaves it alone too.
      const add = await fx.invoke(
        bandwidthPlugin,
        fx.env("ADD", "ctr-a", ns),
        bwConf({ egressRate: 10 * MBIT, egressBurst: 100_000 }, prev),
      );
      expect(add.json.msg).toContain(`${ifb} exists but is a bridge device, not an IFB`);
      expect(ipJson(["link", "show", ifb])).toHaveLength(1);
    } finally {
      delLink(ifb);
    }
  });
});
