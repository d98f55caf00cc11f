import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { formatIp } from "../address/address.ts";
import { CniError } from "../protocol/types.ts";
import { DEFAULT_DATA_DIR, parseHostLocalConfig, parseResolvConf } from "./ranges.ts";

function codeOf(fn: () => unknown): { code: number; msg: string } {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return { code: e.code, msg: e.message };
    throw e;
  }
  throw new Error("expected a CniError");
}

const bounds = (cfg: ReturnType<typeof parseHostLocalConfig>) =>
  cfg.rangeSets.map((s) =>
    s.ranges.map((r) => ({
      subnet: r.subnet.toString(),
      start: formatIp(r.subnet.ip(r.start)),
      end: formatIp(r.subnet.ip(r.end)),
      gateway: formatIp(r.subnet.ip(r.gateway)),
    })),
  );

describe("parseHostLocalConfig defaults", () => {
  it("IPv4: gateway and start = network+1, end = broadcast-1", () => {
    const cfg = parseHostLocalConfig({ type: "berth-host-local", ranges: [[{ subnet: "10.1.0.0/24" }]] });
    expect(bounds(cfg)).toEqual([[{ subnet: "10.1.0.0/24", start: "10.1.0.1", end: "10.1.0.254", gateway: "10.1.0.1" }]]);
    expect(cfg.dataDir).toBe(DEFAULT_DATA_DIR);
    expect(cfg.routes).toEqual([]);
  });

  it("IPv6: end = last address", () => {
    const cfg = parseHostLocalConfig({ ranges: [[{ subnet: "fd00:1::/120" }]] });
    expect(bounds(cfg)[0]![0]).toMatchObject({ start: "fd00:1::1", end: "fd00:1::ff", gateway: "fd00:1::1" });
  });

  it("keeps explicit bounds, legacy range, runtimeConfig.ipRanges first, dual-stack", () => {
    const cfg = parseHostLocalConfig(
      {
        subnet: "10.10.0.0/16",
        rangeStart: "10.10.1.20",
        rangeEnd: "10.10.3.50",
        gateway: "10.10.0.254",
        ranges: [[{ subnet: "fd00::/64", rangeStart: "fd00::0010", rangeEnd: "fd00::20" }]],
        routes: [{ dst: "0.0.0.0/0" }, { dst: "192.168.0.0/16", gw: "10.10.5.1" }, { dst: "fd00::1/64" }],
        dataDir: "/tmp/x",
      },
      { ipRanges: [[{ subnet: "172.16.5.0/24" }, { subnet: "172.16.6.0/24" }]] },
    );
    expect(bounds(cfg).map((s) => s.map((r) => r.subnet))).toEqual([
      ["172.16.5.0/24", "172.16.6.0/24"],
      ["10.10.0.0/16"],
      ["fd00::/64"],
    ]);
    expect(bounds(cfg)[1]![0]).toEqual({
      subnet: "10.10.0.0/16",
      start: "10.10.1.20",
      end: "10.10.3.50",
      gateway: "10.10.0.254",
    });
    expect(bounds(cfg)[2]![0]).toMatchObject({ start: "fd00::10", end: "fd00::20" });
    expect(cfg.rangeSets.map((s) => s.family)).toEqual([4, 4, 6]);
    // Route destinations are masked to their network (the kernel refuses IPv4 host bits).
    expect(cfg.routes).toEqual([{ dst: "0.0.0.0/0" }, { dst: "192.168.0.0/16", gw: "10.10.5.1" }, { dst: "fd00::/64" }]);
    expect(cfg.dataDir).toBe("/tmp/x");
  });
});

describe("parseHostLocalConfig validation (code 7, names the key)", () => {
  it.each<[string, Record<string, unknown>, Record<string, unknown> | undefined, RegExp]>([
    ["no ranges", {}, undefined, /needs ipam\.ranges/],
    ["ranges not an array", { ranges: "10.0.0.0/8" }, undefined, /ipam\.ranges must be an array/],
    ["empty range set", { ranges: [[]] }, undefined, /ipam\.ranges\[0\] must be a non-empty array/],
    ["range not an object", { ranges: [["10.0.0.0/8"]] }, undefined, /ipam\.ranges\[0\]\[0\] must be an object/],
    ["missing subnet", { ranges: [[{ rangeStart: "10.0.0.1" }]] }, undefined, /ipam\.ranges\[0\]\[0\]\.subnet is required/],
    ["subnet not a string", { ranges: [[{ subnet: 10 }]] }, undefined, /subnet must be a CIDR string/],
    ["prefix too long", { ranges: [[{ subnet: "10.0.0.0/33" }]] }, undefined, /ipam\.ranges\[0\]\[0\]\.subnet .*\/33/],
    [
      "host bits",
      { ranges: [[{ subnet: "10.1.0.1/24" }]] },
      undefined,
      /subnet "10\.1\.0\.1\/24" has host bits set \(the network is 10\.1\.0\.0\/24\)/,
    ],
    ["/31", { ranges: [[{ subnet: "10.1.0.0/31" }]] }, undefined, /10\.1\.0\.0\/31 is too small/],
    ["/32", { subnet: "10.1.0.1/32" }, undefined, /ipam\.subnet 10\.1\.0\.1\/32 is too small/],
    ["/127", { ranges: [[{ subnet: "fd00::/127" }]] }, undefined, /is too small: IPv6/],
    ["/128", { ranges: [[{ subnet: "fd00::1/128" }]] }, undefined, /is too small/],
    [
      "rangeStart outside",
      { ranges: [[{ subnet: "10.0.0.0/24" }, { subnet: "10.1.0.0/24", rangeStart: "10.2.0.5" }]] },
      undefined,
      /ipam\.ranges\[0\]\[1\]\.rangeStart 10\.2\.0\.5 is outside subnet 10\.1\.0\.0\/24/,
    ],
    [
      "rangeEnd outside",
      { ranges: [[{ subnet: "10.1.0.0/24", rangeEnd: "10.1.1.0" }]] },
      undefined,
      /rangeEnd 10\.1\.1\.0 is outside/,
    ],
    [
      "rangeEnd broadcast",
      { ranges: [[{ subnet: "10.1.0.0/24", rangeEnd: "10.1.0.255" }]] },
      undefined,
      /rangeEnd 10\.1\.0\.255 is the broadcast/,
    ],
    [
      "rangeStart network",
      { ranges: [[{ subnet: "10.1.0.0/24", rangeStart: "10.1.0.0" }]] },
      undefined,
      /rangeStart 10\.1\.0\.0 is the network address/,
    ],
    [
      "rangeStart garbage",
      { ranges: [[{ subnet: "10.1.0.0/24", rangeStart: "ten" }]] },
      undefined,
      /rangeStart "ten" is not an IP address/,
    ],
    [
      "rangeStart wrong family",
      { ranges: [[{ subnet: "10.1.0.0/24", rangeStart: "fd00::1" }]] },
      undefined,
      /rangeStart fd00::1 is outside/,
    ],
    [
      "gateway outside",
      { ranges: [[{ subnet: "10.1.0.0/24", gateway: "10.9.0.1" }]] },
      undefined,
      /gateway 10\.9\.0\.1 is outside subnet/,
    ],
    [
      "start after end",
      { ranges: [[{ subnet: "10.1.0.0/24", rangeStart: "10.1.0.50", rangeEnd: "10.1.0.40" }]] },
      undefined,
      /rangeStart 10\.1\.0\.50 is after ipam\.ranges\[0\]\[0\]\.rangeEnd 10\.1\.0\.40/,
    ],
    [
      "only the gateway",
      { ranges: [[{ subnet: "10.1.0.0/24", rangeStart: "10.1.0.1", rangeEnd: "10.1.0.1" }]] },
      undefined,
      /holds only its gateway/,
    ],
    [
      "mixed families in a set",
      { ranges: [[{ subnet: "10.1.0.0/24" }, { subnet: "fd00::/64" }]] },
      undefined,
      /a range set holds one family/,
    ],
    [
      "overlap within a set",
      { ranges: [[{ subnet: "10.1.0.0/16" }, { subnet: "10.1.5.0/24" }]] },
      undefined,
      /ipam\.ranges\[0\]\[1\] \(10\.1\.5\.1-10\.1\.5\.254\) overlaps ipam\.ranges\[0\]\[0\]/,
    ],
    [
      "overlap across sets",
      { ranges: [[{ subnet: "10.1.0.0/24" }], [{ subnet: "10.1.0.0/24" }]] },
      undefined,
      /ipam\.ranges\[1\]\[0\] .* overlaps ipam\.ranges\[0\]\[0\]/,
    ],
    [
      "runtime range overlaps config",
      { ranges: [[{ subnet: "10.1.0.0/24" }]] },
      { ipRanges: [[{ subnet: "10.1.0.0/16" }]] },
      /ipam\.ranges\[0\]\[0\] .* overlaps runtimeConfig\.ipRanges\[0\]\[0\]/,
    ],
    [
      "bad runtime range",
      { ranges: [[{ subnet: "10.1.0.0/24" }]] },
      { ipRanges: [[{ subnet: "x" }]] },
      /runtimeConfig\.ipRanges\[0\]\[0\]\.subnet/,
    ],
    [
      "legacy rangeStart without subnet",
      { rangeStart: "10.1.0.5", ranges: [[{ subnet: "10.1.0.0/24" }]] },
      undefined,
      /ipam\.rangeStart needs ipam\.subnet/,
    ],
    [
      "relative dataDir",
      { ranges: [[{ subnet: "10.1.0.0/24" }]], dataDir: "var/lib" },
      undefined,
      /ipam\.dataDir must be an absolute/,
    ],
    ["routes not array", { ranges: [[{ subnet: "10.1.0.0/24" }]], routes: {} }, undefined, /ipam\.routes must be an array/],
    [
      "route without dst",
      { ranges: [[{ subnet: "10.1.0.0/24" }]], routes: [{ gw: "10.1.0.1" }] },
      undefined,
      /ipam\.routes\[0\]\.dst must be a CIDR/,
    ],
    [
      "route bad dst",
      { ranges: [[{ subnet: "10.1.0.0/24" }]], routes: [{ dst: "10.0.0.0/40" }] },
      undefined,
      /ipam\.routes\[0\]\.dst .*\/40/,
    ],
    [
      "route bad gw",
      { ranges: [[{ subnet: "10.1.0.0/24" }]], routes: [{ dst: "0.0.0.0/0", gw: "fd00::1" }] },
      undefined,
      /ipam\.routes\[0\]\.gw fd00::1 is IPv6 but dst 0\.0\.0\.0\/0 is IPv4/,
    ],
    [
      "route bad mtu",
      { ranges: [[{ subnet: "10.1.0.0/24" }]], routes: [{ dst: "0.0.0.0/0", mtu: "big" }] },
      undefined,
      /ipam\.routes\[0\]\.mtu must be a non-negative integer/,
    ],
  ])("%s", (_name, ipam, runtimeConfig, msg) => {
    const err = codeOf(() => parseHostLocalConfig(ipam, runtimeConfig));
    expect(err.code).toBe(7);
    expect(err.msg).toMatch(msg);
  });

  it("an unreadable resolvConf is an I/O error (5) naming the file", () => {
    const err = codeOf(() =>
      parseHostLocalConfig({ ranges: [[{ subnet: "10.1.0.0/24" }]], resolvConf: "/nonexistent/resolv.conf" }),
    );
    expect(err.code).toBe(5);
    expect(err.msg).toMatch(/\/nonexistent\/resolv\.conf: ENOENT/);
  });
});

describe("resolvConf", () => {
  it("parses nameserver, domain, search and options, ignoring comments", () => {
    expect(
      parseResolvConf(
        "# generated\nnameserver 10.0.0.10\nnameserver fd00::10 ; second\ndomain example.com\nsearch a.example b.example\noptions ndots:5 rotate\noptions edns0\n",
      ),
    ).toEqual({
      nameservers: ["10.0.0.10", "fd00::10"],
      domain: "example.com",
      search: ["a.example", "b.example"],
      options: ["ndots:5", "rotate", "edns0"],
    });
    expect(parseResolvConf("# nothing\n\n")).toBeUndefined();
  });

  it("is read from the file named by resolvConf", () => {
    const dir = mkdtempSync(join(tmpdir(), "berth-ipam-"));
    try {
      writeFileSync(join(dir, "resolv.conf"), "nameserver 1.1.1.1\n");
      const cfg = parseHostLocalConfig({ ranges: [[{ subnet: "10.1.0.0/24" }]], resolvConf: join(dir, "resolv.conf") });
      expect(cfg.dns).toEqual({ nameservers: ["1.1.1.1"] });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("host-local keys are matched as its Go decoder matches them", () => {
  it("reads Go-cased ipam keys, ranges, routes and runtimeConfig.ipRanges (go-cni IPRanges has no JSON tags)", () => {
    const cfg = parseHostLocalConfig(
      {
        type: "berth-host-local",
        Ranges: [[{ SUBNET: "10.2.0.0/24" }]],
        Routes: [{ Dst: "0.0.0.0/0", GW: "10.2.0.1", Priority: 5 }],
        DataDir: "/tmp/bt-ipam",
      },
      { ipRanges: [[{ Subnet: "10.1.0.0/24", RangeStart: "10.1.0.100", RangeEnd: "10.1.0.110", Gateway: "10.1.0.254" }]] },
    );
    expect(bounds(cfg)).toEqual([
      [{ subnet: "10.1.0.0/24", start: "10.1.0.100", end: "10.1.0.110", gateway: "10.1.0.254" }],
      [{ subnet: "10.2.0.0/24", start: "10.2.0.1", end: "10.2.0.254", gateway: "10.2.0.1" }],
    ]);
    expect(cfg.routes).toEqual([{ dst: "0.0.0.0/0", gw: "10.2.0.1", priority: 5 }]);
    expect(cfg.dataDir).toBe("/tmp/bt-ipam");
  });

  it("reads a Go-cased legacy range and still names the declared key in errors", () => {
    expect(bounds(parseHostLocalConfig({ Subnet: "10.3.0.0/24", RangeEnd: "10.3.0.9" }))).toEqual([
      [{ subnet: "10.3.0.0/24", start: "10.3.0.1", end: "10.3.0.9", gateway: "10.3.0.1" }],
    ]);
    expect(codeOf(() => parseHostLocalConfig({}, { ipRanges: [[{ Subnet: "10.1.0.0/24", RangeStart: "x" }]] }))).toMatchObject({
      code: 7,
      msg: expect.stringContaining("runtimeConfig.ipRanges[0][0].rangeStart"),
    });
  });
});
