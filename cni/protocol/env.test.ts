import { describe, expect, it } from "vitest";
import { parseCniArgs, parseEnv } from "./env.ts";
import { CniError } from "./types.ts";

const base = {
  CNI_COMMAND: "ADD",
  CNI_CONTAINERID: "abc123",
  CNI_NETNS: "/var/run/netns/test",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/opt/cni/bin:/usr/lib/cni",
};

function failure(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error("expected a CniError, nothing was thrown");
}

describe("parseEnv", () => {
  it("parses a complete ADD environment", () => {
    const env = parseEnv({ ...base, CNI_ARGS: "K8S_POD_NAME=web;IgnoreUnknown=1;FOO=bar", HOME: "/root" });
    expect(env).toEqual({
      command: "ADD",
      containerId: "abc123",
      netns: "/var/run/netns/test",
      ifname: "eth0",
      args: { K8S_POD_NAME: "web", IgnoreUnknown: "1" },
      path: ["/opt/cni/bin", "/usr/lib/cni"],
      netnsOverride: false,
      vars: { ...base, CNI_ARGS: "K8S_POD_NAME=web;IgnoreUnknown=1;FOO=bar" },
    });
  });

  // Every row: env overrides → code and a message that names the variable.
  it.each<[string, Record<string, string | undefined>, number, RegExp]>([
    ["missing CNI_COMMAND", { CNI_COMMAND: undefined }, 4, /CNI_COMMAND is not set/],
    ["empty CNI_COMMAND", { CNI_COMMAND: "" }, 4, /CNI_COMMAND is not set/],
    ["unknown CNI_COMMAND", { CNI_COMMAND: "ATTACH" }, 4, /CNI_COMMAND "ATTACH" is not one of/],
    ["lowercase command", { CNI_COMMAND: "add" }, 4, /CNI_COMMAND "add"/],
    ["missing CNI_CONTAINERID", { CNI_CONTAINERID: undefined }, 4, /variable CNI_CONTAINERID not set for ADD/],
    ["empty CNI_CONTAINERID", { CNI_CONTAINERID: "" }, 4, /CNI_CONTAINERID/],
    ["container id starting with -", { CNI_CONTAINERID: "-abc" }, 4, /CNI_CONTAINERID "-abc" is invalid/],
    ["container id with /", { CNI_CONTAINERID: "a/b" }, 4, /CNI_CONTAINERID "a\/b" is invalid/],
    ["container id with space", { CNI_CONTAINERID: "a b" }, 4, /CNI_CONTAINERID/],
    ["missing CNI_NETNS on ADD", { CNI_NETNS: undefined }, 4, /CNI_NETNS not set for ADD/],
    ["relative CNI_NETNS", { CNI_NETNS: "netns/x" }, 4, /CNI_NETNS must be an absolute path/],
    ["CNI_NETNS with ..", { CNI_NETNS: "/var/run/netns/../../etc/passwd" }, 4, /CNI_NETNS must not contain "\.\."/],
    ["missing CNI_IFNAME", { CNI_IFNAME: undefined }, 4, /CNI_IFNAME not set/],
    ["CNI_IFNAME too long", { CNI_IFNAME: "a234567890123456" }, 4, /CNI_IFNAME "a234567890123456" is 16 bytes/],
    ["CNI_IFNAME too long in bytes", { CNI_IFNAME: "éééééééé" }, 4, /16 bytes/],
    ["CNI_IFNAME .", { CNI_IFNAME: "." }, 4, /CNI_IFNAME must not be "\." or "\.\."/],
    ["CNI_IFNAME ..", { CNI_IFNAME: ".." }, 4, /CNI_IFNAME must not be/],
    ["CNI_IFNAME with /", { CNI_IFNAME: "eth/0" }, 4, /CNI_IFNAME "eth\/0" must not contain/],
    ["CNI_IFNAME with :", { CNI_IFNAME: "eth0:1" }, 4, /CNI_IFNAME/],
    ["CNI_IFNAME with tab", { CNI_IFNAME: "eth\t0" }, 4, /CNI_IFNAME/],
    ["CNI_IFNAME with non-breaking space", { CNI_IFNAME: "eth\u00a00" }, 4, /CNI_IFNAME/],
    ["missing CNI_PATH", { CNI_PATH: undefined }, 4, /CNI_PATH not set/],
    ["CNI_PATH of only colons", { CNI_PATH: "::" }, 4, /CNI_PATH has no directories/],
    ["several missing", { CNI_CONTAINERID: undefined, CNI_IFNAME: "" }, 4, /variables CNI_CONTAINERID, CNI_IFNAME not set/],
    ["malformed CNI_ARGS", { CNI_ARGS: "FOO" }, 4, /CNI_ARGS is malformed: "FOO"/],
    ["CNI_ARGS empty key", { CNI_ARGS: "=x" }, 4, /CNI_ARGS is malformed/],
    ["unknown CNI_ARGS key", { CNI_ARGS: "FOO=bar" }, 2, /CNI_ARGS: unknown key "FOO" \(value "bar"\)/],
    ["bad IgnoreUnknown", { CNI_ARGS: "IgnoreUnknown=yes" }, 4, /IgnoreUnknown must be/],
  ])("%s", (_name, overrides, code, msg) => {
    const env = { ...base, ...overrides };
    const err = failure(() => parseEnv(env));
    expect(err.code).toBe(code);
    expect(err.message).toMatch(msg);
  });

  it("DEL does not need CNI_NETNS but validates it when given", () => {
    const del = { ...base, CNI_COMMAND: "DEL", CNI_NETNS: undefined };
    expect(parseEnv(del).netns).toBe("");
    expect(parseEnv({ ...del, CNI_NETNS: "" }).netns).toBe("");
    expect(failure(() => parseEnv({ ...del, CNI_NETNS: "relative" })).message).toMatch(/CNI_NETNS/);
  });

  it("CHECK needs what ADD needs", () => {
    expect(failure(() => parseEnv({ ...base, CNI_COMMAND: "CHECK", CNI_NETNS: undefined })).message).toMatch(/CNI_NETNS/);
  });

  it("GC needs only CNI_PATH and ignores the per-attachment variables", () => {
    const gc = parseEnv({ CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin", CNI_CONTAINERID: "!!", CNI_IFNAME: "x/y" });
    expect(gc).toMatchObject({ command: "GC", containerId: "", ifname: "", netns: "", path: ["/opt/cni/bin"] });
    expect(failure(() => parseEnv({ CNI_COMMAND: "GC" })).message).toMatch(/CNI_PATH not set for GC/);
  });

  it("STATUS and VERSION need nothing but the command", () => {
    expect(parseEnv({ CNI_COMMAND: "STATUS" })).toMatchObject({ command: "STATUS", path: [] });
    expect(parseEnv({ CNI_COMMAND: "VERSION", CNI_ARGS: "garbage" })).toMatchObject({ command: "VERSION", args: {} });
  });

  it("accepts the longest legal names", () => {
    const env = parseEnv({ ...base, CNI_IFNAME: "a23456789012345", CNI_CONTAINERID: `A${"b_.-".repeat(40)}` });
    expect(env.ifname).toBe("a23456789012345");
  });

  it("skips empty CNI_PATH segments", () => {
    expect(parseEnv({ ...base, CNI_PATH: ":/a::/b:" }).path).toEqual(["/a", "/b"]);
  });

  it.each([
    ["1", true],
    ["true", true],
    ["TRUE", true],
    ["0", false],
    ["", false],
  ])("CNI_NETNS_OVERRIDE=%s → %s", (v, expected) => {
    expect(parseEnv({ ...base, CNI_NETNS_OVERRIDE: v }).netnsOverride).toBe(expected);
  });
});

describe("parseCniArgs", () => {
  it("parses pairs, skips empty segments, keeps '=' inside values", () => {
    expect(parseCniArgs("IP=10.0.0.2;MAC=02:00:00:00:00:01;;TOKEN=a=b;", ["IP", "MAC", "TOKEN"])).toEqual({
      IP: "10.0.0.2",
      MAC: "02:00:00:00:00:01",
      TOKEN: "a=b",
    });
  });

  it("accepts the common Kubernetes keys without declaration", () => {
    expect(parseCniArgs("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c;K8S_POD_UID=u")).toEqual({
      K8S_POD_NAMESPACE: "ns",
      K8S_POD_NAME: "p",
      K8S_POD_INFRA_CONTAINER_ID: "c",
      K8S_POD_UID: "u",
    });
  });

  it("refuses undeclared keys with code 2 naming key and value", () => {
    const err = failure(() => parseCniArgs("IP=10.0.0.2"));
    expect(err.code).toBe(2);
    expect(err.message).toContain('"IP"');
    expect(err.message).toContain('"10.0.0.2"');
  });

  it.each(["IgnoreUnknown=1", "IgnoreUnknown=true", "IgnoreUnknown=True"])(
    "%s drops undeclared keys, wherever it appears",
    (flag) => {
      expect(parseCniArgs(`FOO=1;${flag};IP=10.0.0.2`, ["IP"])).toEqual({ IgnoreUnknown: flag.split("=")[1], IP: "10.0.0.2" });
      expect(parseCniArgs(`${flag};FOO=1`)).not.toHaveProperty("FOO");
    },
  );

  it("IgnoreUnknown=0 still refuses", () => {
    expect(failure(() => parseCniArgs("IgnoreUnknown=0;FOO=1")).code).toBe(2);
  });

  it("malformed pairs fail even when IgnoreUnknown is set", () => {
    expect(failure(() => parseCniArgs("IgnoreUnknown=1;JUNK")).code).toBe(4);
  });
});
