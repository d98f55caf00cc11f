import { isIPv4 as nodeIsIPv4, isIPv6 as nodeIsIPv6 } from "node:net";
import { describe, expect, it } from "vitest";
import {
  AddressError,
  addressKey,
  cidrFamily,
  familyOf,
  firstHost,
  formatIp,
  ipFamily,
  ipOf,
  isIPv4,
  isIPv6,
  isMac,
  normalizeCidr,
  parseIp,
  parseIpPrefix,
  Subnet,
  subnetOf,
  tryParseIp,
  valueFromKey,
} from "./address.ts";

describe("parseIp / formatIp", () => {
  it("round-trips IPv4", () => {
    expect(parseIp("10.1.2.3")).toEqual({ family: 4, value: 0x0a010203n });
    expect(formatIp(parseIp("255.255.255.255"))).toBe("255.255.255.255");
    expect(formatIp(parseIp("0.0.0.0"))).toBe("0.0.0.0");
  });

  it("parses IPv6 in every shape and formats it per RFC 5952", () => {
    expect(parseIp("::").value).toBe(0n);
    expect(parseIp("::1").value).toBe(1n);
    expect(formatIp(parseIp("2001:DB8:0:0:0:0:0:1"))).toBe("2001:db8::1");
    expect(formatIp(parseIp("3ffe:ffff:0:01ff::0010"))).toBe("3ffe:ffff:0:1ff::10");
    // Longest zero run wins; a single zero group is not compressed.
    expect(formatIp(parseIp("2001:0:0:1:0:0:0:1"))).toBe("2001:0:0:1::1");
    expect(formatIp(parseIp("2001:db8:0:1:1:1:1:1"))).toBe("2001:db8:0:1:1:1:1:1");
    expect(formatIp(parseIp("fd00::"))).toBe("fd00::");
    expect(parseIp("::ffff:10.1.2.3")).toEqual({ family: 6, value: (0xffffn << 32n) | 0x0a010203n });
    expect(formatIp(parseIp("::ffff:10.1.2.3"))).toBe("::ffff:10.1.2.3");
    expect(parseIp("64:ff9b::192.0.2.33").value).toBe((0x64n << 112n) | (0xff9bn << 96n) | 0xc0000221n);
    expect(formatIp(parseIp("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))).toBe("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
  });

  it("formats IPv6 like iproute2 does (RFC 5952)", () => {
    const f = (s: string) => formatIp({ family: 6, value: parseIp(s).value });
    expect(f("fd00:0:0:2:0:0:0:0")).toBe("fd00:0:0:2::");
    expect(f("2001:db8:0:0:1:0:0:1")).toBe("2001:db8::1:0:0:1");
    expect(f("::")).toBe("::");
    expect(f("::1")).toBe("::1");
    expect(f("1:0:1:0:1:0:1:0")).toBe("1:0:1:0:1:0:1:0");
    expect(f("::ffff:192.0.2.1")).toBe("::ffff:192.0.2.1"); // inet_ntop and `ip` print a mapped IPv4 dotted
    expect(f("FD00::ABCD")).toBe("fd00::abcd");
    // Of two equal zero runs, the first is compressed.
    expect(f("0:0:1:0:0:1:0:0")).toBe("::1:0:0:1:0:0");
  });

  it.each([
    "",
    "10.0.0",
    "10.0.0.256",
    "010.0.0.1",
    "1::2::3",
    "fe80::1%eth0",
    "10.0.0.1/24",
    "fd00::1/64",
    "::ffff:010.0.0.1",
    "[::1]",
    "hello",
  ])("rejects %j", (s) => {
    expect(() => parseIp(s)).toThrow(AddressError);
    expect(tryParseIp(s)).toBeNull();
  });

  it("names what is not an address", () => {
    expect(() => parseIp("banana")).toThrow(/"banana" is not an IP address/);
    expect(tryParseIp(42)).toBeNull();
  });
});

// Our validators must agree with Node's, but for zone ids.
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
  "10.0.0.1/24",
  "fd00::/64",
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
    expect(cidrFamily("fe80::1%eth0/64")).toBeNull();
    expect(ipFamily("fd00::1")).toBe(6);
    expect(ipFamily("10.0.0.1")).toBe(4);
    expect(ipFamily("10.0.0.1/8")).toBeNull();
  });

  it("isMac", () => {
    expect(isMac("02:42:AC:11:00:02")).toBe(true);
    expect(isMac("02-42-ac-11-00-02")).toBe(false);
    expect(isMac("02:42:ac:11:00")).toBe(false);
  });
});

describe("Subnet", () => {
  it("parses strictly and names the network when host bits are set", () => {
    expect(Subnet.parse("10.1.0.0/24").toString()).toBe("10.1.0.0/24");
    expect(() => Subnet.parse("10.1.0.5/24")).toThrow(/host bits set \(the network is 10\.1\.0\.0\/24\)/);
    expect(() => Subnet.parse("fd00::1/64")).toThrow(/the network is fd00::\/64/);
    expect(() => Subnet.parse("10.0.0.1/8")).toThrow(/the network is 10.0.0.0\/8/);
    expect(Subnet.parseMasked("10.0.0.1/8").toString()).toBe("10.0.0.0/8");
  });

  it.each([
    ["10.0.0.0/33", /invalid prefix length \/33 \(IPv4 allows 0 to 32\)/],
    ["fd00::/129", /\/129/],
    ["10.0.0.0/-1", /invalid prefix length/],
    ["10.0.0.0/08", /invalid prefix length/],
    ["10.0.0.0", /no prefix length/],
    ["10.0.0.0/", /invalid prefix length/],
    ["banana/8", /"banana" is not an IP address/],
  ])("rejects %s", (s, msg) => {
    expect(() => Subnet.parse(s)).toThrow(msg);
    expect(() => Subnet.parse(s)).toThrow(AddressError);
  });

  it("computes network, last, size, contains and overlaps", () => {
    const s = Subnet.parse("10.1.0.0/30");
    expect(s.size).toBe(4n);
    expect(formatIp(s.ip(s.last))).toBe("10.1.0.3");
    expect(s.contains(parseIp("10.1.0.3"))).toBe(true);
    expect(s.contains(parseIp("10.1.0.4"))).toBe(false);
    expect(s.contains(parseIp("::ffff:10.1.0.1"))).toBe(false); // other family
    expect(Subnet.parse("10.0.0.0/8").overlaps(Subnet.parse("10.200.0.0/16"))).toBe(true);
    expect(Subnet.parse("10.1.0.0/24").overlaps(Subnet.parse("10.1.1.0/24"))).toBe(false);
    expect(Subnet.parse("fd00::/64").overlaps(Subnet.parse("fd00::/48"))).toBe(true);
    expect(Subnet.containing(parseIp("10.9.8.7"), 16).toString()).toBe("10.9.0.0/16");
    const v6 = Subnet.parse("fd00::/120");
    expect(formatIp(v6.ip(v6.last))).toBe("fd00::ff");
    expect(s.nth(0n)).toBe("10.1.0.0");
    expect(s.nth(1n)).toBe("10.1.0.1");
    expect(Subnet.host(parseIp("fd00::5")).toString()).toBe("fd00::5/128");
    expect(s.equals(Subnet.parse("10.1.0.0/30"))).toBe(true);
    expect(s.equals(Subnet.parse("10.1.0.0/29"))).toBe(false);
    expect(s.equals(undefined)).toBe(false);
  });

  it("splits a network into subnets and finds them again", () => {
    const n = Subnet.parse("10.244.0.0/16");
    expect(n.subnetCount(24)).toBe(256n);
    expect(n.subnetAt(24, 255n).toString()).toBe("10.244.255.0/24");
    expect(n.subnetIndex(Subnet.parse("10.244.7.0/24"))).toBe(7n);
    expect(n.subnetIndex(Subnet.parse("10.245.7.0/24"))).toBeNull();
    expect(n.subnetIndex(Subnet.parse("10.0.0.0/8"))).toBeNull();
    const n6 = Subnet.parse("fd00:10:244::/48");
    expect(n6.subnetAt(64, 0xcan).toString()).toBe("fd00:10:244:ca::/64");
    expect(n6.includes(Subnet.parse("fd00:10:244:ca::/64"))).toBe(true);
    expect(n.includes(Subnet.parse("0.0.0.0/0"))).toBe(false);
    expect(n.includes(Subnet.host(parseIp("10.244.3.4")))).toBe(true);
    expect(n.includes(Subnet.host(parseIp("fd00::1")))).toBe(false);
  });

  it("keeps host bits in an interface address", () => {
    const p = parseIpPrefix("10.1.0.5/24");
    expect(formatIp(p.ip)).toBe("10.1.0.5");
    expect(p.prefix).toBe(24);
  });
});

describe("addressKey", () => {
  it("sorts bytewise in numeric order, IPv4 as v4-mapped IPv6", () => {
    const addrs = ["10.0.0.255", "10.0.1.0", "9.255.255.255", "::1", "fd00::1", "255.255.255.255"].map(parseIp);
    const byKey = [...addrs].sort((a, b) => Buffer.compare(addressKey(a), addressKey(b))).map(formatIp);
    expect(byKey).toEqual(["::1", "9.255.255.255", "10.0.0.255", "10.0.1.0", "255.255.255.255", "fd00::1"]);
    expect(valueFromKey(addressKey(parseIp("10.0.0.1")))).toBe(parseIp("::ffff:10.0.0.1").value);
  });
});

describe("CNI address text helpers", () => {
  it("splits, masks and normalizes address/prefix strings", () => {
    expect(familyOf("10.1.0.5/24")).toBe(4);
    expect(familyOf("fd00::5")).toBe(6);
    expect(ipOf("10.1.0.5/24")).toBe("10.1.0.5");
    expect(subnetOf("10.1.0.5/24")).toBe("10.1.0.0/24");
    expect(subnetOf("fd00::5/64")).toBe("fd00::/64");
    expect(firstHost("10.1.0.5/24")).toBe("10.1.0.1");
    expect(firstHost("fd00::5/64")).toBe("fd00::1");
    expect(normalizeCidr("FD00:0:0:0:0:0:0:5/64")).toBe("fd00::5/64");
    expect(normalizeCidr("default")).toBe("default");
  });
});
