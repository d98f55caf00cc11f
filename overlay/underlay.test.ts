// Underlay discovery against this host's own interfaces (read-only: nothing is created).
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
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

  it("uses the VXLAN overhead of the underlay family", () => {
    expect(vxlanOverhead(4)).toBe(50);
    expect(vxlanOverhead(6)).toBe(70);
  });
});
