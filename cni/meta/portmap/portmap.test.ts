// berth-portmap chained after berth-bridge on the real kernel: rules read back with
// `nft -j`, traffic through the mapped port from the host (gateway address and 127.0.0.1)
// and from the pod itself (hairpin), conflicts, GC, and 100 attachments coming and going.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChainFixture } from "../../../testing/chain-fixture.ts";
import { sh } from "../../../testing/kernel.ts";
import { deliveredThrough, killTcpServers, tcpServer } from "../../../testing/tcp.ts";
import type { Result } from "../../protocol/types.ts";
import { PORT_IN_USE, portmapPlugin } from "./portmap.ts";

let fx: ChainFixture;

beforeEach(() => {
  fx = new ChainFixture("pm");
});

afterEach(() => {
  killTcpServers();
  fx.cleanup();
});

/** A port high enough not to meet anything of the host's, random per test. */
function hostPort(): number {
  return 20000 + Math.floor(Math.random() * 20000);
}

function portmapConf(mappings: unknown[], prev?: Result, extra: Record<string, unknown> = {}) {
  return fx.metaConf("berth-portmap", { runtimeConfig: { portMappings: mappings }, ...extra }, prev);
}

interface Element {
  set: string;
  key: unknown;
  value?: unknown;
  comment?: string;
}

/** Elements of the portmap sets/maps as `nft -j` shows them. */
function elements(): Element[] {
  const out: Element[] = [];
  for (const o of fx.nftTable()) {
    const s = o.map ?? o.set;
    if (!s?.name.startsWith("pm")) continue;
    for (const raw of s.elem ?? []) {
      const [k, v] = o.map ? raw : [raw, undefined];
      out.push({ set: s.name, key: k.elem ? k.elem.val : k, value: v, comment: k.elem?.comment });
    }
  }
  return out;
}

/** What a server in `netns` on `port` got through `address:hostPort`; up to three tries, as a
 * loaded run's listener can take one connection that carries nothing. */
async function delivered(netns: string, port: number, address: string, hostPort: number, text: string, from?: string) {
  let got = "";
  for (let attempt = 0; attempt < 3 && got !== text; attempt++) {
    got = await deliveredThrough(netns, port, address, hostPort, text, from);
  }
  return got;
}

describe("berth-portmap", () => {
  it("ADD maps tcp and udp host ports (nft map elements), passes prevResult through; CHECK; DEL removes them; DEL again is fine", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const podIp = prev.ips![0]!.address.split("/")[0]!;
    const hp = hostPort();
    const mappings = [
      { hostPort: hp, containerPort: 80, protocol: "tcp" },
      { hostPort: hp + 1, containerPort: 53, protocol: "UDP", hostIP: "127.0.0.1" },
    ];
    const added = await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-a", ns), portmapConf(mappings, prev));
    expect(added.exitCode, JSON.stringify(added.json)).toBe(0);
    expect(added.json).toEqual(prev);

    const els = elements();
    const tag = els[0]?.comment;
    expect(tag).toMatch(/^[0-9a-f]{12} [0-9a-f]{20}$/);
    expect(els.filter((e) => e.set === "pm4_any")).toEqual([
      { set: "pm4_any", key: { concat: ["tcp", hp] }, value: { concat: [podIp, 80] }, comment: tag },
    ]);
    expect(els.filter((e) => e.set === "pm4_ip")).toEqual([
      { set: "pm4_ip", key: { concat: ["127.0.0.1", "udp", hp + 1] }, value: { concat: [podIp, 53] }, comment: tag },
    ]);
    expect(els.filter((e) => e.set === "pm4_snat").map((e) => e.key)).toEqual(
      expect.arrayContaining([{ concat: [podIp, "tcp", 80] }, { concat: [podIp, "udp", 53] }]),
    );
    // snat (default true) needs route_localnet on the bridge for 127.0.0.1 to reach the pod.
    expect(sh("cat", [`/proc/sys/net/ipv4/conf/${fx.bridge}/route_localnet`]).trim()).toBe("1");
    const rules = JSON.stringify(fx.nftTable().filter((o) => o.rule?.chain === "pm_prerouting" || o.rule?.chain === "pm_output"));
    expect(rules).toContain('"jump":{"target":"pm_dnat"}');

    expect((await fx.invoke(portmapPlugin, fx.env("CHECK", "ctr-a", ns), portmapConf(mappings, prev))).exitCode).toBe(0);

    const del = await fx.invoke(portmapPlugin, fx.env("DEL", "ctr-a", ns), portmapConf(mappings, prev));
    expect(del.exitCode, JSON.stringify(del.json)).toBe(0);
    expect(elements()).toEqual([]);
    const check = await fx.invoke(portmapPlugin, fx.env("CHECK", "ctr-a", ns), portmapConf(mappings, prev));
    expect(check.exitCode).toBe(1);
    expect(check.json.msg).toMatch(/is missing/);
    expect((await fx.invoke(portmapPlugin, fx.env("DEL", "ctr-a", ns), portmapConf(mappings, prev))).exitCode).toBe(0);
    expect((await fx.invoke(portmapPlugin, fx.env("DEL", "ctr-a", undefined), portmapConf(mappings))).exitCode).toBe(0);
  });

  it("the host reaches the container through the hostPort on the bridge address and on 127.0.0.1", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const hp = hostPort();
    const mappings = [{ hostPort: hp, containerPort: 8080, protocol: "tcp" }];
    expect((await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-a", ns), portmapConf(mappings, prev))).exitCode).toBe(0);

    expect(await delivered(ns, 8080, fx.gateway, hp, "via-gateway\n")).toBe("via-gateway\n");
    expect(await delivered(ns, 8080, "127.0.0.1", hp, "via-localhost\n")).toBe("via-localhost\n");

    // After DEL the port is closed again: nothing answers on the gateway address.
    expect((await fx.invoke(portmapPlugin, fx.env("DEL", "ctr-a", ns), portmapConf(mappings, prev))).exitCode).toBe(0);
    const stillThere = (await tcpServer(ns, 8080)).received;
    sh("ip", ["netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
    expect(() => sh("busybox", ["nc", "-w", "1", fx.gateway, String(hp)], "x\n")).toThrow();
    sh("ip", ["netns", "exec", ns, "busybox", "nc", "-w", "1", "127.0.0.1", "8080"], "bye\n");
    expect(await stillThere).toBe("bye\n");
  });

  it("hairpin: a container reaches its own hostPort (masqueraded, so the reply finds its way back)", async () => {
    const ns = fx.netns("a");
    // With br_netfilter the DNAT happens as the frame enters the bridge, which then sends it
    // back out of the port it came from: that takes hairpin mode (as with the reference).
    const prev = await fx.bridgeAdd("ctr-a", ns, "eth0", { hairpinMode: true });
    const hp = hostPort();
    const mappings = [{ hostPort: hp, containerPort: 9000, protocol: "tcp" }];
    expect((await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-a", ns), portmapConf(mappings, prev))).exitCode).toBe(0);
    // The pod needs a route to the gateway's subnet only: the gateway address is on-link.
    expect(await delivered(ns, 9000, fx.gateway, hp, "hairpin\n", ns)).toBe("hairpin\n");
    expect(elements().filter((e) => e.set === "pm4_hairpin")).toHaveLength(1);
  });

  it("IPv6: a dual-stack container gets pm6 elements and is reached on the IPv6 gateway", async () => {
    const ns = fx.netns("a");
    const v6 = `fd${Math.floor(Math.random() * 0xff)
      .toString(16)
      .padStart(2, "0")}:${Math.floor(Math.random() * 0xffff).toString(16)}::/64`;
    const prev = await fx.bridgeAdd("ctr-a", ns, "eth0", {
      ipam: { type: "berth-host-local", dataDir: fx.dataDir, ranges: [[{ subnet: fx.subnet }], [{ subnet: v6 }]] },
    });
    const pod6 = prev.ips!.find((i) => i.address.includes(":"))!;
    const hp = hostPort();
    const mappings = [{ hostPort: hp, containerPort: 8080 }];
    expect((await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-a", ns), portmapConf(mappings, prev))).exitCode).toBe(0);
    const v6any = elements().filter((e) => e.set === "pm6_any");
    expect(v6any).toEqual([
      expect.objectContaining({ key: { concat: ["tcp", hp] }, value: { concat: [pod6.address.split("/")[0], 8080] } }),
    ]);
    expect(await delivered(ns, 8080, pod6.gateway!, hp, "over-v6\n")).toBe("over-v6\n");
  });

  it("a hostPort held by another container is refused with code 120 and leaves the first mapping intact", async () => {
    const nsA = fx.netns("a");
    const nsB = fx.netns("b");
    const prevA = await fx.bridgeAdd("ctr-a", nsA);
    const prevB = await fx.bridgeAdd("ctr-b", nsB);
    const hp = hostPort();
    const mappings = [{ hostPort: hp, containerPort: 80 }];
    expect((await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-a", nsA), portmapConf(mappings, prevA))).exitCode).toBe(0);
    const before = elements();
    const clash = await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-b", nsB), portmapConf(mappings, prevB));
    expect(clash.exitCode).toBe(1);
    expect(clash.json.code).toBe(PORT_IN_USE);
    expect(clash.json.msg).toContain(`port ${hp}/tcp is already mapped`);
    expect(elements()).toEqual(before);
    // The same port on a specific host address is a different key, and wins for that address.
    const specific = [{ hostPort: hp, containerPort: 80, hostIP: fx.gateway }];
    expect((await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-b", nsB), portmapConf(specific, prevB))).exitCode).toBe(0);
    expect(elements().filter((e) => e.set === "pm4_ip")).toHaveLength(1);
  });

  it("stale UDP conntrack entries for a hostPort are flushed on ADD and on DEL", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const hp = hostPort();
    const mappings = [{ hostPort: hp, containerPort: 53, protocol: "udp" }];
    // A flow as a client sending to the port before the mapping existed would have left it (TEST-NET addresses).
    const insert = () =>
      sh("conntrack", [
        "-I",
        "-p",
        "udp",
        "-s",
        "198.51.100.7",
        "-d",
        "203.0.113.9",
        "--sport",
        "4000",
        "--dport",
        String(hp),
        "--timeout",
        "120",
      ]);
    const flows = () => {
      try {
        return sh("conntrack", ["-L", "-p", "udp", "--orig-port-dst", String(hp)]).trim();
      } catch {
        return "";
      }
    };
    insert();
    expect(flows()).toContain(`dport=${hp}`);
    expect((await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-a", ns), portmapConf(mappings, prev))).exitCode).toBe(0);
    expect(flows()).toBe("");
    insert();
    expect((await fx.invoke(portmapPlugin, fx.env("DEL", "ctr-a", ns), portmapConf(mappings, prev))).exitCode).toBe(0);
    expect(flows()).toBe("");
  });

  it("a call without port mappings touches nothing (no table is created)", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    for (const cmd of ["ADD", "CHECK", "DEL"]) {
      const r = await fx.invoke(portmapPlugin, fx.env(cmd, "ctr-a", ns), fx.metaConf("berth-portmap", {}, prev));
      expect(r.exitCode, JSON.stringify(r.json)).toBe(0);
    }
    expect(() => sh("nft", ["list", "table", "inet", fx.table])).toThrow();
  });

  it("bad input is a typed error naming the key", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const cases: [unknown, RegExp][] = [
      [[{ hostPort: 0, containerPort: 80 }], /portMappings\[0\]\.hostPort/],
      [[{ hostPort: 80, containerPort: 80, protocol: "icmp" }], /portMappings\[0\]\.protocol" must be tcp, udp or sctp/],
      [[{ hostPort: 80, containerPort: 80, hostIP: "nope" }], /hostIP" must be an IP address/],
      ["80:80", /portMappings" must be an array/],
    ];
    for (const [m, re] of cases) {
      const r = await fx.invoke(
        portmapPlugin,
        fx.env("ADD", "ctr-a", ns),
        fx.metaConf("berth-portmap", { runtimeConfig: { portMappings: m } }, prev),
      );
      expect(r.exitCode).toBe(1);
      expect(r.json.code).toBe(7);
      expect(r.json.msg).toMatch(re);
    }
    const noPrev = await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-a", ns), portmapConf([{ hostPort: 80, containerPort: 80 }]));
    expect(noPrev.json.msg).toMatch(/needs "prevResult"/);
    const ipt = await fx.invoke(portmapPlugin, fx.env("ADD", "ctr-a", ns), portmapConf([], prev, { backend: "iptables" }));
    expect(ipt.json.code).toBe(2);
  });

  it("GC removes the mappings of attachments that are no longer valid and keeps the rest", async () => {
    const ns = fx.netns("a");
    const template = await fx.bridgeAdd("ctr-a", ns);
    const hp = hostPort();
    const base = fx.subnet.split(".").slice(0, 3).join(".");
    for (let i = 0; i < 3; i++) {
      const prev = { ...template, ips: [{ address: `${base}.${50 + i}/24`, gateway: fx.gateway, interface: 2 }] };
      const r = await fx.invoke(
        portmapPlugin,
        fx.env("ADD", `gc-${i}`, ns),
        portmapConf([{ hostPort: hp + i, containerPort: 80 }], prev),
      );
      expect(r.exitCode, JSON.stringify(r.json)).toBe(0);
    }
    expect(elements().filter((e) => e.set === "pm4_any")).toHaveLength(3);
    const gc = await fx.invoke(
      portmapPlugin,
      { CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin" },
      {
        ...fx.metaConf("berth-portmap", {}),
        "cni.dev/valid-attachments": [{ containerID: "gc-1", ifname: "eth0" }],
      },
    );
    expect(gc.exitCode, JSON.stringify(gc.json)).toBe(0);
    expect(elements().filter((e) => e.set === "pm4_any")).toEqual([
      expect.objectContaining({ key: { concat: ["tcp", hp + 1] } }),
    ]);
  });

  it("100 attachments with port mappings come and go in parallel: the table holds nothing of theirs", async () => {
    const ns = fx.netns("a");
    const template = await fx.bridgeAdd("ctr-a", ns);
    const x = fx.subnet.split(".").slice(0, 2).join(".");
    const hp = hostPort();
    const conf = (i: number) =>
      portmapConf(
        [
          { hostPort: hp + 2 * i, containerPort: 80 },
          { hostPort: hp + 2 * i + 1, containerPort: 53, protocol: "udp" },
        ],
        { ...template, ips: [{ address: `${x}.${Math.floor(i / 200)}.${(i % 200) + 20}/16`, interface: 2 }] },
      );
    const run = async (cmd: string) => {
      for (let batch = 0; batch < 100; batch += 10) {
        const outs = await Promise.all(
          Array.from({ length: 10 }, (_, j) => fx.invoke(portmapPlugin, fx.env(cmd, `many-${batch + j}`, ns), conf(batch + j))),
        );
        for (const o of outs) expect(o.exitCode, JSON.stringify(o.json)).toBe(0);
      }
    };
    await run("ADD");
    expect(elements().filter((e) => e.set === "pm4_any")).toHaveLength(200);
    await run("DEL");
    expect(elements()).toEqual([]);
  });
});
