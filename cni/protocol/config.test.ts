import { describe, expect, it } from "vitest";
import { gcAttachments, MAX_CONFIG_BYTES, parseNetConf, requestedIps, requestedMac } from "./config.ts";
import { CniError, type NetConf } from "./types.ts";
import { pickVersion, requireCommandInVersion } from "./version.ts";

function failure(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error("expected a CniError, nothing was thrown");
}

const stdin = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v));
const good = { cniVersion: "1.1.0", name: "net-1", type: "bridge" };

describe("parseNetConf", () => {
  it("parses a config and reports its version", () => {
    const { config, version } = parseNetConf(stdin({ ...good, bridge: "br0", ipam: { type: "host-local" } }));
    expect(version).toBe("1.1.0");
    expect(config).toEqual({ ...good, bridge: "br0", ipam: { type: "host-local" } });
  });

  it("treats a missing cniVersion as 0.1.0", () => {
    const { config, version } = parseNetConf(stdin({ name: "n", type: "t" }));
    expect(version).toBe("0.1.0");
    expect(config.cniVersion).toBe("0.1.0");
  });

  it("picks the highest supported entry of cniVersions", () => {
    expect(parseNetConf(stdin({ ...good, cniVersion: "0.4.0", cniVersions: ["0.3.1", "1.0.0", "2.0.0"] })).version).toBe("1.0.0");
  });

  it.each<[string, string | object, number, RegExp]>([
    ["invalid JSON", "{name:", 6, /not valid JSON/],
    ["empty stdin", "", 6, /no network configuration on stdin/],
    ["whitespace only", "  \n", 6, /no network configuration/],
    ["a JSON array", "[]", 6, /must be a JSON object/],
    ["JSON null", "null", 6, /must be a JSON object/],
    ["missing name", { cniVersion: "1.0.0", type: "bridge" }, 7, /"name" is required/],
    ["empty name", { ...good, name: "" }, 7, /"name" is required/],
    ["name with /", { ...good, name: "a/b" }, 7, /"name" must start with a letter or digit/],
    ["name starting with .", { ...good, name: ".hidden" }, 7, /"name"/],
    ["name a number", { ...good, name: 5 }, 7, /"name"/],
    ["missing type", { cniVersion: "1.0.0", name: "n" }, 7, /"type" is required/],
    ["type not a string", { ...good, type: ["bridge"] }, 7, /"type" must be a string/],
    ["unsupported cniVersion", { ...good, cniVersion: "0.5.0" }, 1, /"0\.5\.0" is not supported/],
    ["cniVersion not a string", { ...good, cniVersion: 1 }, 7, /"cniVersion" must be a string/],
    ["no supported version in cniVersions", { ...good, cniVersion: "2.0.0", cniVersions: ["3.0.0"] }, 1, /"2\.0\.0"/],
    ["cniVersions not an array", { ...good, cniVersions: "1.0.0" }, 7, /"cniVersions" must be an array/],
    ["ipam not an object", { ...good, ipam: "host-local" }, 7, /"ipam" must be an object/],
    ["ipam.type not a string", { ...good, ipam: { type: 1 } }, 7, /"ipam\.type"/],
    ["runtimeConfig an array", { ...good, runtimeConfig: [] }, 7, /"runtimeConfig" must be an object/],
    ["args a string", { ...good, args: "x" }, 7, /"args" must be an object/],
    ["ipMasq a string", { ...good, ipMasq: "yes" }, 7, /"ipMasq" must be true or false/],
    ["logFile a number", { ...good, logFile: 3 }, 7, /"logFile"/],
    ["malformed prevResult", { ...good, prevResult: { ips: [{ address: "nope" }] } }, 6, /prevResult\.ips\[0\]\.address/],
  ])("%s → code %i", (_name, input, code, msg) => {
    const err = failure(() => parseNetConf(stdin(input)));
    expect(err.code).toBe(code);
    expect(err.message).toMatch(msg);
  });

  it("refuses stdin over the size limit", () => {
    const big = Buffer.alloc(MAX_CONFIG_BYTES + 1, 0x20);
    expect(failure(() => parseNetConf(big)).code).toBe(5);
  });

  it("upconverts a 0.2.0 prevResult into the newest shape", () => {
    const { config } = parseNetConf(
      stdin({ ...good, cniVersion: "0.2.0", prevResult: { ip4: { ip: "10.0.0.2/24", gateway: "10.0.0.1" }, dns: {} } }),
    );
    expect(config.prevResult).toEqual({ cniVersion: "1.1.0", ips: [{ address: "10.0.0.2/24", gateway: "10.0.0.1" }] });
  });

  it("upconverts a 0.4.0 prevResult (drops ips[].version)", () => {
    const { config } = parseNetConf(
      stdin({
        ...good,
        cniVersion: "0.4.0",
        prevResult: { cniVersion: "0.4.0", ips: [{ version: "6", address: "fd00::2/64" }] },
      }),
    );
    expect(config.prevResult?.ips).toEqual([{ address: "fd00::2/64" }]);
  });
});

describe("version rules", () => {
  it.each([
    ["CHECK", "0.3.1", false],
    ["CHECK", "0.4.0", true],
    ["GC", "1.0.0", false],
    ["GC", "1.1.0", true],
    ["STATUS", "0.4.0", false],
    ["STATUS", "1.1.0", true],
    ["ADD", "0.1.0", true],
    ["DEL", "0.1.0", true],
  ] as const)("%s at %s allowed: %s", (cmd, v, ok) => {
    if (ok) expect(() => requireCommandInVersion(cmd, v)).not.toThrow();
    else expect(failure(() => requireCommandInVersion(cmd, v))).toMatchObject({ code: 1 });
  });

  it("pickVersion ignores unknown list entries and falls back to cniVersion", () => {
    expect(pickVersion("0.3.1", ["9.0.0"])).toBe("0.3.1");
    expect(pickVersion(undefined, ["0.4.0", "0.3.0"])).toBe("0.4.0");
    expect(pickVersion("1.1.0", undefined)).toBe("1.1.0");
  });
});

function conf(extra: Record<string, unknown>): NetConf {
  return { ...good, ...extra } as NetConf;
}

describe("requestedIps precedence", () => {
  const rc = { runtimeConfig: { ips: ["10.0.0.5/24"] } };
  const args = { args: { cni: { ips: ["10.0.0.6"] } } };
  const env = { IP: "10.0.0.7,fd00::7" };

  it.each<[string, Record<string, unknown>, Record<string, string>, string[]]>([
    ["runtimeConfig wins over everything", { ...rc, ...args }, env, ["10.0.0.5/24"]],
    ["args.cni.ips wins over CNI_ARGS", args, env, ["10.0.0.6"]],
    ["CNI_ARGS IP= alone, comma-separated", {}, env, ["10.0.0.7", "fd00::7"]],
    ["empty runtimeConfig.ips falls through", { runtimeConfig: { ips: [] }, ...args }, {}, ["10.0.0.6"]],
    ["nothing requested", {}, {}, []],
  ])("%s", (_n, extra, cniArgs, expected) => {
    expect(requestedIps({ config: conf(extra), args: cniArgs })).toEqual(expected);
  });

  it.each<[string, Record<string, unknown>, Record<string, string>, RegExp]>([
    ["bad runtimeConfig entry", { runtimeConfig: { ips: ["10.0.0.300"] } }, {}, /"runtimeConfig\.ips\[0\]"/],
    ["runtimeConfig.ips not an array", { runtimeConfig: { ips: "10.0.0.5" } }, {}, /"runtimeConfig\.ips" must be an array/],
    ["bad args.cni entry", { args: { cni: { ips: [5] } } }, {}, /"args\.cni\.ips\[0\]"/],
    ["args.cni not an object", { args: { cni: "x" } }, {}, /"args\.cni" must be an object/],
    ["bad CNI_ARGS IP", {}, { IP: "10.0.0.5,zzz" }, /"CNI_ARGS IP\[1\]"/],
    ["bad prefix", {}, { IP: "10.0.0.5/33" }, /CNI_ARGS IP/],
  ])("%s → code 7", (_n, extra, cniArgs, msg) => {
    const err = failure(() => requestedIps({ config: conf(extra), args: cniArgs }));
    expect(err.code).toBe(7);
    expect(err.message).toMatch(msg);
  });

  it("ignores a malformed CNI_ARGS copy when args carries the value", () => {
    expect(requestedIps({ config: conf(args), args: { IP: "garbage" } })).toEqual(["10.0.0.6"]);
  });
});

describe("requestedMac precedence", () => {
  const a = "02:00:00:00:00:0a";
  const b = "02:00:00:00:00:0b";
  const c = "02:00:00:00:00:0c";
  it("runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC", () => {
    expect(requestedMac({ config: conf({ runtimeConfig: { mac: a }, args: { cni: { mac: b } } }), args: { MAC: c } })).toBe(a);
    expect(requestedMac({ config: conf({ args: { cni: { mac: b } } }), args: { MAC: c } })).toBe(b);
    expect(requestedMac({ config: conf({}), args: { MAC: c } })).toBe(c);
    expect(requestedMac({ config: conf({}), args: {} })).toBeUndefined();
  });

  it("rejects a malformed MAC naming its source", () => {
    expect(failure(() => requestedMac({ config: conf({ runtimeConfig: { mac: "zz" } }), args: {} })).message).toMatch(
      /"runtimeConfig\.mac"/,
    );
    expect(failure(() => requestedMac({ config: conf({}), args: { MAC: "02:00:00:00:00" } })).message).toMatch(/"CNI_ARGS MAC"/);
  });
});

describe("gcAttachments", () => {
  it("unions both keys and removes duplicates", () => {
    const list = gcAttachments(
      conf({
        "cni.dev/valid-attachments": [
          { containerID: "a", ifname: "eth0" },
          { containerID: "b", ifname: "eth0" },
        ],
        "cni.dev/attachments": [
          { containerID: "a", ifname: "eth0" },
          { containerID: "c", ifname: "net1" },
        ],
      }),
    );
    expect(list).toEqual([
      { containerID: "a", ifname: "eth0" },
      { containerID: "b", ifname: "eth0" },
      { containerID: "c", ifname: "net1" },
    ]);
  });

  it("reads the old key alone, an empty list, and null as empty", () => {
    expect(gcAttachments(conf({ "cni.dev/attachments": [{ containerID: "x", ifname: "e" }] }))).toHaveLength(1);
    expect(gcAttachments(conf({ "cni.dev/valid-attachments": [] }))).toEqual([]);
    expect(gcAttachments(conf({ "cni.dev/valid-attachments": null }))).toEqual([]);
  });

  it("reads neither key as an empty list: what libcni sends when the runtime names no valid attachment", () => {
    expect(gcAttachments(conf({}))).toEqual([]);
    expect(gcAttachments(conf({ "cni.dev/valid-attachments": null, "cni.dev/attachments": null }))).toEqual([]);
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    ["not an array", { "cni.dev/valid-attachments": {} }, /"cni\.dev\/valid-attachments" must be an array/],
    ["entry without ifname", { "cni.dev/valid-attachments": [{ containerID: "a" }] }, /"cni\.dev\/valid-attachments\[0\]"/],
    ["entry with numeric id", { "cni.dev/attachments": [{ containerID: 1, ifname: "e" }] }, /"cni\.dev\/attachments\[0\]"/],
  ])("%s → code 7", (_n, extra, msg) => {
    const err = failure(() => gcAttachments(conf(extra)));
    expect(err.code).toBe(7);
    expect(err.message).toMatch(msg);
  });
});

describe("the shared sections' keys are matched as the reference decoder matches them", () => {
  it("reads Go-cased top-level, ipam, dns, runtimeConfig and args keys under their declared names", () => {
    const { config, version } = parseNetConf(
      stdin({
        CNIVersion: "1.0.0",
        Name: "net-1",
        TYPE: "bridge",
        IPAM: { Type: "host-local", Ranges: [[{ Subnet: "10.1.0.0/24" }]] },
        DNS: { Nameservers: ["10.1.0.53"], Domain: "cluster.local", Search: ["svc.cluster.local"], Options: ["ndots:5"] },
        RuntimeConfig: {
          PortMappings: [{ HostPort: 18080, ContainerPort: 8080, Protocol: "tcp", HostIP: "" }],
          IPs: ["10.1.0.9"],
        },
        Args: { CNI: { MAC: "02:00:00:00:00:09" } },
        bridge: "br0",
      }),
    );
    expect(version).toBe("1.0.0");
    expect(config).toMatchObject({
      cniVersion: "1.0.0",
      name: "net-1",
      type: "bridge",
      // A plugin's own keys inside ipam are matched by that plugin's parser.
      ipam: { type: "host-local", Ranges: [[{ Subnet: "10.1.0.0/24" }]] },
      dns: { nameservers: ["10.1.0.53"], domain: "cluster.local", search: ["svc.cluster.local"], options: ["ndots:5"] },
      runtimeConfig: { portMappings: [{ HostPort: 18080, ContainerPort: 8080, Protocol: "tcp", HostIP: "" }] },
      bridge: "br0",
    });
    expect(requestedIps({ config, args: {} })).toEqual(["10.1.0.9"]);
    expect(requestedMac({ config, args: {} })).toBe("02:00:00:00:00:09");
  });

  it("still refuses a bad value under a Go-cased key, naming the declared key", () => {
    expect(failure(() => parseNetConf(stdin({ ...good, RuntimeConfig: "x" }))).message).toMatch(
      /"runtimeConfig" must be an object/,
    );
    expect(failure(() => parseNetConf(stdin({ cniVersion: "1.0.0", Name: "bad name", type: "t" }))).message).toMatch(
      /"name" must start/,
    );
  });

  it("reads GC attachments with Go-cased fields", () => {
    const { config } = parseNetConf(
      stdin({ ...good, "CNI.dev/Valid-Attachments": [{ ContainerID: "a", IfName: "eth0" }], "cni.dev/attachments": null }),
    );
    expect(gcAttachments(config)).toEqual([{ containerID: "a", ifname: "eth0" }]);
  });
});
