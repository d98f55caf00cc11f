// Underlay discovery against this host's own interfaces (read-only: nothing is created).
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { Netns } from "../native/netns.ts";
import { addNetns, delNetns, ipJson, sh, testPrefix } from "../testing/kernel.ts";
import { discoverUnderlay, UnderlayError, vxlanOverhead } from "./underlay.ts";

describe("discoverUnderlay", () => {
  it("finds the interface holding --public-ip, with its MTU", () => {
    const u = discoverUnderlay({ publicIP: "127.0.0.1" });
    expect(u).toMatchObject({ iface: "lo", publicIP: "127.0.0.1", family: 4 });
    expect(u.mtu).toBe(Number(readFileSync("/sys/class/net/lo/mtu", "utf8")));
  });

  it("says clearly what is wrong", () => {
    expect(() => discoverUnderlay({ iface: "nope0" })).toThrow(UnderlayError);
    expect(() => discoverUnderlay({ iface: "nope0" })).toThrow(/"nope0" does not exist/);
    expect(() => discoverUnderlay({ iface: "lo" })).toThrow(/has no usable address/);
    expect(() => discoverUnderlay({ publicIP: "192.0.2.254" })).toThrow(/no interface holds 192.0.2.254/);
    expect(() => discoverUnderlay({ iface: "nope0", publicIP: "127.0.0.1" })).toThrow(
      /127.0.0.1 is on lo, not on --underlay-iface nope0/,
    );
  });

  it("finds the address of an underlay whose link is up but has no carrier yet", () => {
    const ns = `${testPrefix()}ul`;
    addNetns(ns);
    try {
      // A veth whose peer is down: UP but not RUNNING, which os.networkInterfaces() leaves out.
      sh("ip", ["-n", ns, "link", "add", "ul0", "mtu", "1400", "type", "veth", "peer", "name", "ul1"]);
      sh("ip", ["-n", ns, "addr", "add", "192.0.2.7/24", "dev", "ul0"]);
      sh("ip", ["-n", ns, "addr", "add", "2001:db8::7/64", "dev", "ul0", "nodad"]);
      sh("ip", ["-n", ns, "link", "set", "ul0", "up"]);
      const link = ipJson<{ flags: string[] }>(["link", "show", "ul0"], ns)[0]!;
      expect(link.flags).toContain("NO-CARRIER");
      const netns = Netns.open(ns);
      try {
        const u = netns.enter(() => discoverUnderlay({ iface: "ul0" }));
        expect(u).toEqual({ iface: "ul0", publicIP: "192.0.2.7", family: 4, mtu: 1400 });
        const v6 = netns.enter(() => discoverUnderlay({ publicIP: "2001:db8::7" }));
        expect(v6).toEqual({ iface: "ul0", publicIP: "2001:db8::7", family: 6, mtu: 1400 });
      } finally {
        netns.close();
      }
    } finally {
      delNetns(ns);
    }
  });

  it("uses the VXLAN overhead of the underlay family", () => {
    expect(vxlanOverhead(4)).toBe(50);
    expect(vxlanOverhead(6)).toBe(70);
  });
});
