import { describe, expect, it } from "vitest";
import { AddressError, addressKey, formatIp, parseIp, parseIpPrefix, Subnet, valueFromKey } from "./cidr.ts";

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

  it.each(["", "10.0.0", "10.0.0.256", "010.0.0.1", "1::2::3", "fe80::1%eth0", "10.0.0.1/24", "hello"])("rejects %j", (s) => {
    expect(() => parseIp(s)).toThrow(AddressError);
  });
});

describe("Subnet", () => {
  it("parses strictly and names the network when host bits are set", () => {
    expect(Subnet.parse("10.1.0.0/24").toString()).toBe("10.1.0.0/24");
    expect(() => Subnet.parse("10.1.0.5/24")).toThrow(/host bits set \(the network is 10\.1\.0\.0\/24\)/);
    expect(() => Subnet.parse("fd00::1/64")).toThrow(/the network is fd00::\/64/);
  });

  it.each([
    ["10.0.0.0/33", /invalid prefix length \/33 \(IPv4 allows 0 to 32\)/],
    ["fd00::/129", /\/129/],
    ["10.0.0.0/-1", /invalid prefix length/],
    ["10.0.0.0/08", /invalid prefix length/],
    ["10.0.0.0", /no prefix length/],
    ["10.0.0.0/", /invalid prefix length/],
  ])("rejects %s", (s, msg) => {
    expect(() => Subnet.parse(s)).toThrow(msg);
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
