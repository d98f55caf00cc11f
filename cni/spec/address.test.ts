import { isIPv4 as nodeIsIPv4, isIPv6 as nodeIsIPv6 } from "node:net";
import { describe, expect, it } from "vitest";
import { cidrFamily, ipFamily, isIPv4, isIPv6, isMac } from "./address.ts";

// Our validators must agree with Node's (which the plugin avoids loading for start-up time).
const samples = [
  "0.0.0.0",
  "255.255.255.255",
  "10.1.2.3",
  "1.2.3",
  "1.2.3.4.5",
  "256.1.1.1",
  "01.2.3.4",
  "1.2.3.04",
  "1..2.3",
  " 1.2.3.4",
  "1.2.3.4 ",
  "",
  "::",
  "::1",
  "1::",
  "fe80::1",
  "fd00:0:0:0:0:0:0:1",
  "1:2:3:4:5:6:7:8",
  "1:2:3:4:5:6:7:8:9",
  "1:2:3:4:5:6:7::",
  "::1:2:3:4:5:6:7",
  "1::2::3",
  ":1::",
  "1:::2",
  "12345::",
  "g::1",
  "::ffff:10.0.0.1",
  "::ffff:10.0.0.256",
  "1:2:3:4:5:6:1.2.3.4",
  "1:2:3:4:5:6:7:1.2.3.4",
  "1.2.3.4::",
  "::1.2.3.4",
  "ABCD:EF01::",
  "1:2:3:4:5:6:7",
  ":",
  ":::",
  "1:",
  ":1",
  "fe80::1%eth0",
];

describe("address validators", () => {
  it.each(samples)("%j agrees with node:net", (s) => {
    expect(isIPv4(s)).toBe(nodeIsIPv4(s));
    // Node accepts zone ids; a config or result never carries one.
    expect(isIPv6(s)).toBe(nodeIsIPv6(s) && !s.includes("%"));
  });

  it("cidrFamily checks prefix range and format", () => {
    expect(cidrFamily("10.0.0.0/8")).toBe(4);
    expect(cidrFamily("10.0.0.0/32")).toBe(4);
    expect(cidrFamily("10.0.0.0/33")).toBeNull();
    expect(cidrFamily("10.0.0.0/08")).toBeNull();
    expect(cidrFamily("10.0.0.0/")).toBeNull();
    expect(cidrFamily("10.0.0.0")).toBeNull();
    expect(cidrFamily("fd00::/128")).toBe(6);
    expect(cidrFamily("fd00::/129")).toBeNull();
    expect(ipFamily("fd00::1")).toBe(6);
  });

  it("isMac", () => {
    expect(isMac("02:42:AC:11:00:02")).toBe(true);
    expect(isMac("02-42-ac-11-00-02")).toBe(false);
    expect(isMac("02:42:ac:11:00")).toBe(false);
  });
});
