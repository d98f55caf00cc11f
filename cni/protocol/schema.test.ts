import { describe, expect, expectTypeOf, it } from "vitest";
import { configSchema, field, foldKey, goFields, validateConfig } from "./schema.ts";
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

// Expected values below are what Go's encoding/json decodes from the same text into a struct
// whose fields carry these names as JSON tags (checked against Go's decoder).
describe("keys are matched as Go's encoding/json matches struct fields", () => {
  const mapping = configSchema({
    hostPort: field.int(1, 65535).require(),
    containerPort: field.int(1, 65535).require(),
    protocol: field.string().default("tcp"),
    hostIP: field.string(),
  });

  it("takes containerd's Go field names (go-cni PortMapping has no JSON tags)", () => {
    const sent = { HostPort: 18080, ContainerPort: 8080, Protocol: "tcp", HostIP: "" };
    expect(validateConfig(sent, mapping)).toEqual({ hostPort: 18080, containerPort: 8080, protocol: "tcp", hostIP: "" });
  });

  it("folds case as Go does: any ASCII case, ſ (U+017F) for s and K (U+212A) for k, nothing else", () => {
    expect(
      goFields({ HOSTPORT: 1, containerport: 2, ſubnet: "a", "\u212Aind": "b" }, ["hostPort", "containerPort", "subnet", "kind"]),
    ).toEqual({
      hostPort: 1,
      containerPort: 2,
      subnet: "a",
      kind: "b",
    });
    // Dotless ı and dotted İ fold to no ASCII letter: the keys stay unknown.
    expect(goFields({ Kınd: "x", KİND: "y" }, ["kind"])).toEqual({ Kınd: "x", KİND: "y" });
    expect(foldKey("hoſtPort")).toBe(foldKey("HostPort"));
  });

  it("keys that differ only in case: the later one wins, a later null keeps the value, objects merge", () => {
    expect(goFields({ mtu: 1, MTU: 2 }, ["mtu"])).toEqual({ mtu: 2 });
    expect(goFields({ MTU: 2, mtu: 1 }, ["mtu"])).toEqual({ mtu: 1 });
    expect(goFields({ mtu: 5, MTU: null }, ["mtu"])).toEqual({ mtu: 5 });
    expect(goFields({ mtu: null, MTU: 5 }, ["mtu"])).toEqual({ mtu: 5 });
    expect(goFields({ inner: { a: 1 }, Inner: { b: 2 } }, ["inner"])).toEqual({ inner: { a: 1, b: 2 } });
    // Merged objects keep document order, so the inner level's later key still wins.
    const merged = goFields({ inner: { a: 1, A: 2 }, INNER: { a: 3 } }, ["inner"]).inner as Record<string, unknown>;
    expect(goFields(merged, ["a"])).toEqual({ a: 3 });
  });

  it("leaves keys matching no name alone, and returns the object itself when nothing differs", () => {
    const given = { hostPort: 1, other: 2, Other: 3 };
    expect(goFields(given, ["hostPort"])).toBe(given);
    expect(goFields({ HostPort: 1, Other: 3 }, ["hostPort"])).toEqual({ Other: 3, hostPort: 1 });
  });

  it("keeps types, ranges, required keys and exclusivity as strict as before", () => {
    expect(failure(() => validateConfig({ HostPort: "18080", ContainerPort: 8080 }, mapping)).message).toContain(
      '"hostPort" must be an integer between 1 and 65535, got "18080"',
    );
    expect(failure(() => validateConfig({ HostPort: 1 }, mapping)).message).toContain('"containerPort" is required');
    const err = failure(() => validateConfig({ Master: "m", HairpinMode: true, PROMISCMODE: true }, bridgeLike));
    expect(err.code).toBe(2);
    expect(
      validateConfig({ Master: "m", Ranges: [[{ Subnet: "10.1.0.0/24" }]], VlanTrunk: [{ ID: 5 }] }, bridgeLike),
    ).toMatchObject({
      master: "m",
      ranges: [[{ subnet: "10.1.0.0/24" }]],
      vlanTrunk: [{ id: 5 }],
    });
  });
});

describe("field docs (the configuration reference's source)", () => {
  it("each constructor names its type in words", () => {
    expect(field.string().doc.type).toBe("string");
    expect(field.string({ nonEmpty: true }).doc.type).toBe("non-empty string");
    expect(field.string({ oneOf: ["a", "b"] }).doc.type).toBe('one of "a", "b"');
    expect(field.string({ pattern: /^x$/, patternName: "an x" }).doc.type).toBe("string: an x");
    expect(field.boolean().doc.type).toBe("boolean");
    expect(field.int(68, 65535).doc.type).toBe("integer 68-65535");
    expect(field.int(0).doc.type).toBe("integer ≥ 0");
    expect(field.number().doc.type).toBe("number");
    expect(field.cidr(4).doc.type).toBe("IPv4 CIDR");
    expect(field.ip().doc.type).toBe("IP address");
    expect(field.mac().doc.type).toBe("MAC address");
    expect(field.anyObject().doc.type).toBe("object");
    const inner = { subnet: field.cidr().require() };
    const ranges = field.array(field.array(field.object(inner)));
    expect(ranges.doc.type).toBe("array of array of object");
    expect(ranges.doc.fields).toBe(inner);
  });

  it("describe() adds a description and keeps what the field checks, requires and defaults to", () => {
    const f = field
      .string({ oneOf: ["nftables", "iptables"] })
      .default("nftables")
      .unsupported("iptables", "nftables only")
      .describe("Backend.", { extension: true });
    expect(f.doc).toEqual({ type: 'one of "nftables", "iptables"', description: "Backend.", extension: true });
    expect(f.fallback).toBe("nftables");
    expect(f.unsupportedValues).toEqual([{ value: "iptables", reason: "nftables only" }]);
    const schema = configSchema({ backend: f, mtu: field.int(68, 65535).require().describe("MTU.") });
    expect(schema.fields.mtu.required).toBe(true);
    expect(validateConfig({ mtu: 1500 }, schema)).toEqual({ backend: "nftables", mtu: 1500 });
    expect(() => validateConfig({ mtu: 1500, backend: "iptables" }, schema)).toThrow(/"backend": "iptables" is not supported/);
    expect(() => validateConfig({}, schema)).toThrow(/"mtu" is required/);
    // describe() after require() and before it give the same field.
    expect(field.int(1).describe("n").require().doc.description).toBe("n");
  });
});
