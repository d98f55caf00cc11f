import { describe, expect, it } from "vitest";
import { convertResult, parseResult } from "./result.ts";
import { CniError, type Result } from "./types.ts";
import { type CniVersion, SUPPORTED_VERSIONS } from "./version.ts";

/** A dual-stack result using every 1.1.0 field, with two addresses per family. */
const full: Result = {
  cniVersion: "1.1.0",
  interfaces: [
    { name: "cni0", mac: "02:00:00:00:00:01", mtu: 1450 },
    { name: "veth1234", mac: "02:00:00:00:00:02", mtu: 1450 },
    {
      name: "eth0",
      mac: "02:00:00:00:00:03",
      mtu: 1450,
      sandbox: "/var/run/netns/x",
      socketPath: "/run/x.sock",
      pciID: "0000:00:1f.6",
    },
  ],
  ips: [
    { address: "10.1.0.5/24", gateway: "10.1.0.1", interface: 2 },
    { address: "fd00::5/64", gateway: "fd00::1", interface: 2 },
    { address: "10.1.0.6/24", interface: 2 },
    { address: "fd00::6/64", interface: 2 },
  ],
  routes: [
    { dst: "0.0.0.0/0", gw: "10.1.0.1", mtu: 1400, advmss: 1360, priority: 10, table: 100, scope: 0 },
    { dst: "::/0", gw: "fd00::1" },
    { dst: "192.168.0.0/16" },
  ],
  dns: { nameservers: ["10.1.0.1"], domain: "example.org", search: ["example.org"], options: ["ndots:2"] },
};

/** The JSON shape of a converted result, loosely typed for assertions. */
interface Written {
  cniVersion: string;
  interfaces: Record<string, unknown>[];
  ips: { version?: string }[];
  routes: unknown[];
  dns: { nameservers: string[] };
}
const written = (r: Result, v: CniVersion) => convertResult(r, v) as unknown as Written;

describe("convertResult", () => {
  it("1.1.0 keeps every field", () => {
    expect(convertResult(full, "1.1.0")).toEqual({ ...full, cniVersion: "1.1.0" });
  });

  it("1.0.0 drops the 1.1-only interface and route fields", () => {
    const out = written(full, "1.0.0");
    expect(out.cniVersion).toBe("1.0.0");
    expect(out.interfaces[2]).toEqual({ name: "eth0", mac: "02:00:00:00:00:03", sandbox: "/var/run/netns/x" });
    expect(out.routes[0]).toEqual({ dst: "0.0.0.0/0", gw: "10.1.0.1" });
    expect(out.ips).toEqual(full.ips);
    expect(out.dns).toEqual(full.dns);
  });

  it.each(["0.3.0", "0.3.1", "0.4.0"] as const)("%s adds ips[].version and drops 1.1 fields", (v) => {
    const out = written(full, v);
    expect(out.cniVersion).toBe(v);
    expect(out.ips.map((ip) => ip.version)).toEqual(["4", "6", "4", "6"]);
    expect(out.ips[0]).toEqual({ version: "4", interface: 2, address: "10.1.0.5/24", gateway: "10.1.0.1" });
    expect(out.interfaces[2]).toEqual({ name: "eth0", mac: "02:00:00:00:00:03", sandbox: "/var/run/netns/x" });
    expect(out.routes).toEqual([{ dst: "0.0.0.0/0", gw: "10.1.0.1" }, { dst: "::/0", gw: "fd00::1" }, { dst: "192.168.0.0/16" }]);
  });

  it.each(["0.1.0", "0.2.0"] as const)("%s keeps the first address per family and sorts routes by family", (v) => {
    expect(convertResult(full, v)).toEqual({
      cniVersion: v,
      ip4: {
        ip: "10.1.0.5/24",
        gateway: "10.1.0.1",
        routes: [{ dst: "0.0.0.0/0", gw: "10.1.0.1" }, { dst: "192.168.0.0/16" }],
      },
      ip6: { ip: "fd00::5/64", gateway: "fd00::1", routes: [{ dst: "::/0", gw: "fd00::1" }] },
      dns: full.dns,
    });
  });

  it("0.2.0 drops routes of a family without an address", () => {
    const r: Result = { cniVersion: "1.1.0", ips: [{ address: "10.0.0.2/8" }], routes: [{ dst: "::/0", gw: "fd00::1" }] };
    expect(convertResult(r, "0.2.0")).toEqual({ cniVersion: "0.2.0", ip4: { ip: "10.0.0.2/8" } });
  });

  it.each(["0.1.0", "0.2.0"] as const)("%s refuses a result without IPs (code 1)", (v) => {
    const r: Result = { cniVersion: "1.1.0", interfaces: [{ name: "eth0" }] };
    expect(() => convertResult(r, v)).toThrow(CniError);
    expect(() => convertResult(r, v)).toThrow(/no IP addresses/);
    try {
      convertResult(r, v);
    } catch (e) {
      expect((e as CniError).code).toBe(1);
    }
  });

  it("omits absent sections instead of writing nulls", () => {
    expect(convertResult({ cniVersion: "1.1.0" }, "1.1.0")).toEqual({ cniVersion: "1.1.0" });
    expect(JSON.stringify(convertResult({ cniVersion: "1.1.0", ips: [{ address: "10.0.0.1/8" }] }, "0.4.0"))).toBe(
      '{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.1/8"}]}',
    );
  });

  it("does not alias the input", () => {
    const out = written(full, "1.1.0");
    out.dns.nameservers.push("x");
    out.interfaces[0]!.name = "y";
    expect(full.dns?.nameservers).toEqual(["10.1.0.1"]);
    expect(full.interfaces?.[0]?.name).toBe("cni0");
  });
});

describe("parseResult (upconvert to the newest shape)", () => {
  it("reads 0.2.0 ip4/ip6 into ips + routes", () => {
    const legacy = {
      cniVersion: "0.2.0",
      ip4: { ip: "10.1.0.5/24", gateway: "10.1.0.1", routes: [{ dst: "0.0.0.0/0", gw: "10.1.0.1" }] },
      ip6: { ip: "fd00::5/64", routes: [{ dst: "::/0" }] },
      dns: { nameservers: ["1.1.1.1"] },
    };
    expect(parseResult(legacy)).toEqual({
      cniVersion: "1.1.0",
      ips: [{ address: "10.1.0.5/24", gateway: "10.1.0.1" }, { address: "fd00::5/64" }],
      routes: [{ dst: "0.0.0.0/0", gw: "10.1.0.1" }, { dst: "::/0" }],
      dns: { nameservers: ["1.1.1.1"] },
    });
  });

  it("reads 0.3.x/0.4.0 by dropping ips[].version", () => {
    const r = parseResult({
      cniVersion: "0.3.1",
      ips: [{ version: "4", address: "10.0.0.2/8", interface: 0 }],
      interfaces: [{ name: "eth0" }],
    });
    expect(r).toEqual({ cniVersion: "1.1.0", interfaces: [{ name: "eth0" }], ips: [{ address: "10.0.0.2/8", interface: 0 }] });
  });

  it("uses the fallback version when the result has none (a prevResult inside a 0.2.0 config)", () => {
    expect(parseResult({ ip4: { ip: "10.0.0.2/8" } }, "0.2.0").ips).toEqual([{ address: "10.0.0.2/8" }]);
  });

  it("drops the empty dns object Go plugins always print", () => {
    expect(parseResult({ cniVersion: "1.0.0", ips: [{ address: "10.0.0.2/8" }], dns: {} })).toEqual({
      cniVersion: "1.1.0",
      ips: [{ address: "10.0.0.2/8" }],
    });
  });

  it.each<[string, unknown, RegExp]>([
    ["not an object", [1], /invalid result: must be an object/],
    ["bad address", { cniVersion: "1.0.0", ips: [{ address: "10.0.0.300/8" }] }, /result\.ips\[0\]\.address/],
    ["address without prefix", { cniVersion: "1.0.0", ips: [{ address: "10.0.0.3" }] }, /ips\[0\]\.address.*CIDR/],
    ["bad gateway", { cniVersion: "1.0.0", ips: [{ address: "10.0.0.3/8", gateway: "x" }] }, /ips\[0\]\.gateway/],
    ["negative interface", { cniVersion: "1.0.0", ips: [{ address: "10.0.0.3/8", interface: -1 }] }, /ips\[0\]\.interface/],
    ["wrong version field", { cniVersion: "0.4.0", ips: [{ version: "6", address: "10.0.0.3/8" }] }, /ips\[0\]\.version/],
    ["interfaces not an array", { cniVersion: "1.0.0", interfaces: {} }, /interfaces: must be an array/],
    ["route dst", { cniVersion: "1.1.0", routes: [{ dst: "default" }] }, /routes\[0\]\.dst/],
    ["dns nameservers", { cniVersion: "1.1.0", dns: { nameservers: "1.1.1.1" } }, /dns\.nameservers/],
    ["legacy ip", { cniVersion: "0.2.0", ip4: { ip: 5 } }, /ip4\.ip/],
  ])("rejects %s with code 6 naming the field", (_name, raw, msg) => {
    let err: unknown;
    try {
      parseResult(raw);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(6);
    expect((err as CniError).message).toMatch(msg);
  });

  it("rejects an unknown result version with code 1", () => {
    expect(() => parseResult({ cniVersion: "9.9.9" })).toThrow(/9\.9\.9/);
  });
});

describe("round trips between every pair of versions", () => {
  // What survives a trip through version v: 0.2.0 keeps one address per family and only
  // dst/gw routes; 0.3.x/0.4.0/1.0.0 lose the 1.1 fields; 1.1.0 loses nothing.
  function survivorOf(r: Result, v: CniVersion): Result {
    return parseResult(convertResult(r, v), v);
  }
  const versions = SUPPORTED_VERSIONS;
  for (const from of versions) {
    for (const to of versions) {
      it(`${from} → ${to}`, () => {
        const atFrom = survivorOf(full, from);
        const viaTo = survivorOf(atFrom, to);
        // Converting down can only lose information; converting back up recovers nothing more.
        const lower = versions.indexOf(from) < versions.indexOf(to) ? from : to;
        expect(viaTo).toEqual(survivorOf(full, lower));
      });
    }
  }

  it("1.1.0 round trip is lossless", () => {
    expect(survivorOf(full, "1.1.0")).toEqual(full);
  });

  it("0.2.0 trip keeps exactly one address per family", () => {
    const r = survivorOf(full, "0.2.0");
    expect(r.ips?.map((ip) => ip.address)).toEqual(["10.1.0.5/24", "fd00::5/64"]);
    expect(r.interfaces).toBeUndefined();
  });
});
