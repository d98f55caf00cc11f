import { describe, expect, it } from "vitest";
import { CidrError, cidrContains, formatCidr, formatIp, parseCidr, parseIp, subnetAt, subnetCount, subnetIndex } from "./cidr.ts";

describe("cidr", () => {
  it("formats IPv6 like iproute2 does (RFC 5952)", () => {
    const f = (s: string) => formatIp(6, parseIp(s).value);
    expect(f("fd00:0:0:2:0:0:0:0")).toBe("fd00:0:0:2::");
    expect(f("2001:db8:0:0:1:0:0:1")).toBe("2001:db8::1:0:0:1");
    expect(f("::")).toBe("::");
    expect(f("::1")).toBe("::1");
    expect(f("1:0:1:0:1:0:1:0")).toBe("1:0:1:0:1:0:1:0");
    expect(f("::ffff:192.0.2.1")).toBe("::ffff:192.0.2.1"); // inet_ntop and `ip` print a mapped IPv4 dotted
    expect(f("FD00::ABCD")).toBe("fd00::abcd");
  });

  it("splits a network into subnets and finds them again", () => {
    const n = parseCidr("10.244.0.0/16");
    expect(subnetCount(n, 24)).toBe(256n);
    expect(formatCidr(subnetAt(n, 24, 255n))).toBe("10.244.255.0/24");
    expect(subnetIndex(n, parseCidr("10.244.7.0/24"))).toBe(7n);
    expect(subnetIndex(n, parseCidr("10.245.7.0/24"))).toBeNull();
    const n6 = parseCidr("fd00:10:244::/48");
    expect(formatCidr(subnetAt(n6, 64, 0xcan))).toBe("fd00:10:244:ca::/64");
    expect(cidrContains(n6, parseCidr("fd00:10:244:ca::/64"))).toBe(true);
    expect(cidrContains(n, parseCidr("0.0.0.0/0"))).toBe(false);
  });

  it("rejects what is not a CIDR, naming it", () => {
    expect(() => parseCidr("10.0.0.0")).toThrow(CidrError);
    expect(() => parseCidr("10.0.0.0/33")).toThrow(/prefix length must be 0-32/);
    expect(() => parseCidr("10.0.0.1/8")).toThrow(/did you mean 10.0.0.0\/8/);
    expect(() => parseCidr("banana/8")).toThrow(/"banana" is not an IP address/);
    expect(formatCidr(parseCidr("10.0.0.1/8", true))).toBe("10.0.0.0/8");
  });
});
