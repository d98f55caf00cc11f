import { describe, expect, expectTypeOf, it } from "vitest";
import { configSchema, field, validateConfig } from "./schema.ts";
import { CniError } from "./types.ts";

const bridgeLike = configSchema(
  {
    bridge: field.string({ pattern: /^[^/\s:]{1,15}$/, patternName: "an interface name" }).default("cni0"),
    mtu: field.int(68, 65535),
    isGateway: field.boolean(),
    hairpinMode: field.boolean(),
    promiscMode: field.boolean(),
    mode: field.string({ oneOf: ["bridge", "private", "vepa"] }),
    ipMasqBackend: field.string({ oneOf: ["iptables", "nftables"] }).unsupported("iptables", "berth masquerades with nftables"),
    subnet: field.cidr(4),
    gateway: field.ip(),
    mac: field.mac(),
    weight: field.number(0, 1),
    vlanTrunk: field.array(field.object({ id: field.int(1, 4094), minID: field.int(1, 4094) }), { maxItems: 2 }),
    ranges: field.array(field.array(field.object({ subnet: field.cidr().require() }), { minItems: 1 })),
    master: field.string({ nonEmpty: true }).require(),
    delegate: field.anyObject(),
  },
  { exclusive: [["hairpinMode", "promiscMode"]] },
);

function failure(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error("expected a CniError, nothing was thrown");
}

describe("validateConfig", () => {
  it("returns the declared keys typed, with defaults, dropping undeclared ones", () => {
    const conf = validateConfig(
      {
        name: "n",
        type: "bridge",
        master: "eth0",
        mtu: 1450,
        subnet: "10.0.0.0/16",
        gateway: "fd00::1",
        mac: "02:AB:cd:00:00:01",
        weight: 0.5,
        vlanTrunk: [{ id: 10, extra: true }],
        ranges: [[{ subnet: "fd00::/64", rangeStart: "x" }]],
        delegate: { anything: [1, 2] },
        unknownKey: "allowed",
      },
      bridgeLike,
    );
    expect(conf).toEqual({
      bridge: "cni0",
      master: "eth0",
      mtu: 1450,
      subnet: "10.0.0.0/16",
      gateway: "fd00::1",
      mac: "02:AB:cd:00:00:01",
      weight: 0.5,
      vlanTrunk: [{ id: 10 }],
      ranges: [[{ subnet: "fd00::/64" }]],
      delegate: { anything: [1, 2] },
    });
    expectTypeOf(conf.bridge).toEqualTypeOf<string>();
    expectTypeOf(conf.master).toEqualTypeOf<string>();
    expectTypeOf(conf.mtu).toEqualTypeOf<number | undefined>();
    expectTypeOf(conf.ranges).toEqualTypeOf<{ subnet: string }[][] | undefined>();
  });

  it("treats JSON null as absent", () => {
    expect(validateConfig({ master: "eth0", mtu: null, bridge: null }, bridgeLike)).toEqual({ master: "eth0", bridge: "cni0" });
  });

  it.each<[string, Record<string, unknown>, number, string]>([
    ["mtu not a number", { mtu: "abc" }, 7, 'invalid config: "mtu" must be an integer between 68 and 65535, got "abc"'],
    ["mtu too small", { mtu: 67 }, 7, 'invalid config: "mtu" must be an integer between 68 and 65535, got 67'],
    ["mtu fractional", { mtu: 1500.5 }, 7, '"mtu" must be an integer'],
    ["boolean as string", { isGateway: "true" }, 7, 'invalid config: "isGateway" must be true or false, got "true"'],
    ["oneOf", { mode: "passthru" }, 7, '"mode" must be one of "bridge", "private", "vepa", got "passthru"'],
    ["pattern", { bridge: "br/0" }, 7, '"bridge" must be an interface name, got "br/0"'],
    ["cidr family", { subnet: "fd00::/64" }, 7, '"subnet" must be an IPv4 address in CIDR notation, got "fd00::/64"'],
    ["cidr prefix", { subnet: "10.0.0.0/33" }, 7, '"subnet" must be an IPv4 address in CIDR notation'],
    ["ip", { gateway: "10.0.0.1/24" }, 7, '"gateway" must be an IP address, got "10.0.0.1/24"'],
    ["mac", { mac: "02:00:00:00:00" }, 7, '"mac" must be a MAC address'],
    ["number range", { weight: 2 }, 7, '"weight" must be a number between 0 and 1, got 2'],
    ["array type", { vlanTrunk: {} }, 7, '"vlanTrunk" must be an array, got {}'],
    ["array max", { vlanTrunk: [{}, {}, {}] }, 7, '"vlanTrunk" must have at most 2 item(s)'],
    [
      "nested path",
      { vlanTrunk: [{ id: 1 }, { id: 5000 }] },
      7,
      '"vlanTrunk[1].id" must be an integer between 1 and 4094, got 5000',
    ],
    ["nested required", { ranges: [[{ subnet: "10.0.0.0/8" }, {}]] }, 7, 'invalid config: "ranges[0][1].subnet" is required'],
    ["nested minItems", { ranges: [[]] }, 7, '"ranges[0]" must have at least 1 item(s)'],
    ["required missing", { master: undefined }, 7, 'invalid config: "master" is required'],
    ["nonEmpty", { master: "" }, 7, '"master" must not be empty'],
    ["anyObject", { delegate: [] }, 7, '"delegate" must be an object'],
    ["unsupported value", { ipMasqBackend: "iptables" }, 2, 'unsupported field: "ipMasqBackend": "iptables" is not supported'],
    [
      "exclusive pair",
      { hairpinMode: true, promiscMode: true },
      2,
      '"promiscMode": true cannot be combined with "hairpinMode": true',
    ],
  ])("%s → code %i", (_n, overrides, code, msg) => {
    const err = failure(() => validateConfig({ master: "eth0", ...overrides }, bridgeLike));
    expect(err.code).toBe(code);
    expect(err.message).toContain(msg);
  });

  it("exclusive keys may be combined when one is false", () => {
    expect(validateConfig({ master: "m", hairpinMode: true, promiscMode: false }, bridgeLike)).toMatchObject({
      hairpinMode: true,
    });
  });

  it("truncates huge offending values in the message", () => {
    const err = failure(() => validateConfig({ master: "m", mode: "x".repeat(10_000) }, bridgeLike));
    expect(err.message.length).toBeLessThan(300);
  });
});
