// berth-tuning chained after berth-bridge: sysctls read back inside the container netns,
// link settings read back with `ip -j -d`, restored on DEL from the backup file.
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ChainFixture } from "../../../testing/chain-fixture.ts";
import { ipJson, sh } from "../../../testing/kernel.ts";
import { tuningPlugin } from "./tuning.ts";

let fx: ChainFixture;
beforeEach(() => {
  fx = new ChainFixture("tu");
});
afterEach(() => fx.cleanup());

function conf(extra: Record<string, unknown>, prev?: unknown) {
  return fx.metaConf(
    "berth-tuning",
    { dataDir: join(fx.dataDir, "tuning"), sysctlAllowlist: join(fx.dataDir, "allowlist.conf"), ...extra },
    prev as never,
  );
}

function podLink(ns: string) {
  return ipJson(["link", "show", "eth0"], ns)[0];
}

function podSysctl(ns: string, path: string): string {
  return sh("ip", ["netns", "exec", ns, "cat", `/proc/sys/${path}`]).trim();
}

describe("berth-tuning", () => {
  it("ADD sets sysctls and link settings in the container, updates the result; CHECK; DEL restores the link", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const before = podLink(ns);
    const settings = {
      sysctl: { "net.ipv4.conf.IFNAME.rp_filter": "2", "net.core.somaxconn": 512 },
      mac: "02:aa:bb:cc:dd:01",
      mtu: 1400,
      promisc: true,
      allmulti: true,
      txQLen: 2345,
    };
    const added = await fx.invoke(tuningPlugin, fx.env("ADD", "ctr-a", ns), conf(settings, prev));
    expect(added.exitCode, JSON.stringify(added.json)).toBe(0);

    expect(podSysctl(ns, "net/ipv4/conf/eth0/rp_filter")).toBe("2");
    expect(podSysctl(ns, "net/core/somaxconn")).toBe("512");
    const after = podLink(ns);
    expect(after.address).toBe("02:aa:bb:cc:dd:01");
    expect(after.mtu).toBe(1400);
    expect(after.flags).toContain("PROMISC");
    expect(after.flags).toContain("ALLMULTI");
    expect(after.txqlen).toBe(2345);
    // The result is prevResult with the container interface's MAC and MTU updated.
    expect(added.json.ips).toEqual(prev.ips);
    expect(added.json.interfaces[2]).toEqual({ ...prev.interfaces![2], mac: "02:aa:bb:cc:dd:01", mtu: 1400 });
    expect(added.json.interfaces[0]).toEqual(prev.interfaces![0]);

    const backups = readdirSync(join(fx.dataDir, "tuning"));
    expect(backups).toEqual([`${fx.network}-ctr-a-eth0.json`]);
    expect(JSON.parse(readFileSync(join(fx.dataDir, "tuning", backups[0]!), "utf8"))).toMatchObject({
      mac: before.address,
      mtu: before.mtu,
      promisc: false,
      allmulti: false,
      txqlen: before.txqlen,
    });

    expect((await fx.invoke(tuningPlugin, fx.env("CHECK", "ctr-a", ns), conf(settings, added.json))).exitCode).toBe(0);
    sh("ip", ["-n", ns, "link", "set", "eth0", "mtu", "1300"]);
    const drift = await fx.invoke(tuningPlugin, fx.env("CHECK", "ctr-a", ns), conf(settings, added.json));
    expect(drift.exitCode).toBe(1);
    expect(drift.json.msg).toContain("mtu 1300 (want 1400)");
    sh("ip", ["netns", "exec", ns, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/eth0/rp_filter"]);
    sh("ip", ["-n", ns, "link", "set", "eth0", "mtu", "1400"]);
    const sysDrift = await fx.invoke(tuningPlugin, fx.env("CHECK", "ctr-a", ns), conf(settings, added.json));
    expect(sysDrift.json.msg).toMatch(/sysctl net\.ipv4\.conf\.IFNAME\.rp_filter is "0"/);

    const del = await fx.invoke(tuningPlugin, fx.env("DEL", "ctr-a", ns), conf(settings, added.json));
    expect(del.exitCode, JSON.stringify(del.json)).toBe(0);
    const restored = podLink(ns);
    expect(restored.address).toBe(before.address);
    expect(restored.mtu).toBe(before.mtu);
    expect(restored.flags).not.toContain("PROMISC");
    expect(restored.flags).not.toContain("ALLMULTI");
    expect(restored.txqlen).toBe(before.txqlen);
    expect(readdirSync(join(fx.dataDir, "tuning"))).toEqual([]);
    expect((await fx.invoke(tuningPlugin, fx.env("DEL", "ctr-a", ns), conf(settings))).exitCode).toBe(0);
  });

  it("args.cni overrides the config per attachment; a repeated ADD keeps the original backup", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const c = conf({ mtu: 1400, args: { cni: { mtu: 1280, sysctl: { "net.ipv4.conf.IFNAME.arp_ignore": "1" } } } }, prev);
    expect((await fx.invoke(tuningPlugin, fx.env("ADD", "ctr-a", ns), c)).exitCode).toBe(0);
    expect((await fx.invoke(tuningPlugin, fx.env("ADD", "ctr-a", ns), c)).exitCode).toBe(0);
    expect(podLink(ns).mtu).toBe(1280);
    expect(podSysctl(ns, "net/ipv4/conf/eth0/arp_ignore")).toBe("1");
    expect((await fx.invoke(tuningPlugin, fx.env("DEL", "ctr-a", ns), c)).exitCode).toBe(0);
    expect(podLink(ns).mtu).toBe(1500);
  });

  it("refuses non-net sysctls (7), keys outside the allowlist (2) and malformed values (7), before touching anything", async () => {
    const ns = fx.netns("a");
    const prev = await fx.bridgeAdd("ctr-a", ns);
    const cases: [Record<string, unknown>, number, RegExp][] = [
      [{ sysctl: { "kernel.hostname": "x" } }, 7, /"kernel.hostname" is not a net\.\* key/],
      [{ sysctl: { "net.ipv4.conf.IFNAME.nope": "1" } }, 7, /does not exist in the container's network namespace/],
      [{ mtu: "big" }, 7, /"mtu" must be an integer/],
      [{ mac: "zz" }, 7, /"mac" must be a MAC address/],
      [{ args: { cni: { mtu: 10 } } }, 7, /"args\.cni\.mtu"/],
    ];
    for (const [extra, code, re] of cases) {
      const r = await fx.invoke(tuningPlugin, fx.env("ADD", "ctr-a", ns), conf(extra, prev));
      expect(r.exitCode).toBe(1);
      expect(r.json.code).toBe(code);
      expect(r.json.msg).toMatch(re);
    }
    writeFileSync(join(fx.dataDir, "allowlist.conf"), "# only rp_filter\n^net\\.ipv4\\.conf\\.IFNAME\\.rp_filter$\n");
    const blocked = await fx.invoke(
      tuningPlugin,
      fx.env("ADD", "ctr-a", ns),
      conf({ sysctl: { "net.core.somaxconn": "1" }, mtu: 1400 }, prev),
    );
    expect(blocked.json.code).toBe(2);
    expect(blocked.json.msg).toContain("not in the allowlist");
    expect(podLink(ns).mtu).toBe(1500);
    const allowed = await fx.invoke(
      tuningPlugin,
      fx.env("ADD", "ctr-a", ns),
      conf({ sysctl: { "net.ipv4.conf.IFNAME.rp_filter": "1" } }, prev),
    );
    expect(allowed.exitCode, JSON.stringify(allowed.json)).toBe(0);
  });

  it("DEL after the netns is gone drops the backup; GC drops backups of attachments no longer valid", async () => {
    const nsA = fx.netns("a");
    const nsB = fx.netns("b");
    const prevA = await fx.bridgeAdd("ctr-a", nsA);
    const prevB = await fx.bridgeAdd("ctr-b", nsB);
    for (const [cid, ns, prev] of [
      ["ctr-a", nsA, prevA],
      ["ctr-b", nsB, prevB],
    ] as const) {
      expect((await fx.invoke(tuningPlugin, fx.env("ADD", cid, ns), conf({ mtu: 1400 }, prev))).exitCode).toBe(0);
    }
    const dir = join(fx.dataDir, "tuning");
    expect(readdirSync(dir)).toHaveLength(2);
    expect((await fx.invoke(tuningPlugin, fx.env("DEL", "ctr-a", undefined), conf({ mtu: 1400 }))).exitCode).toBe(0);
    expect(existsSync(join(dir, `${fx.network}-ctr-a-eth0.json`))).toBe(false);
    expect((await fx.invoke(tuningPlugin, fx.env("ADD", "ctr-a", nsA), conf({ mtu: 1400 }, prevA))).exitCode).toBe(0);
    const gc = await fx.invoke(
      tuningPlugin,
      { CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin" },
      {
        ...conf({}),
        "cni.dev/valid-attachments": [{ containerID: "ctr-b", ifname: "eth0" }],
      },
    );
    expect(gc.exitCode, JSON.stringify(gc.json)).toBe(0);
    expect(readdirSync(dir)).toEqual([`${fx.network}-ctr-b-eth0.json`]);
  });
});
