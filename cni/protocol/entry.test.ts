import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readStdin } from "./entry.ts";
import { type ToyCall, toyPlugin } from "./fixtures/toy-plugin.ts";
import { handleInvocation } from "./invocation.ts";
import { SUPPORTED_VERSIONS } from "./version.ts";

const baseEnv = {
  CNI_COMMAND: "ADD",
  CNI_CONTAINERID: "c0ffee",
  CNI_NETNS: "/var/run/netns/toy-does-not-exist",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/opt/cni/bin",
};
const conf = (extra: Record<string, unknown> = {}) =>
  Buffer.from(JSON.stringify({ cniVersion: "1.1.0", name: "toynet", type: "toy", ...extra }));

async function invoke(env: Record<string, string | undefined>, stdin: Buffer) {
  const calls: ToyCall[] = [];
  const logs: string[] = [];
  const out = await handleInvocation(toyPlugin(calls), env, stdin, { log: (l) => logs.push(l) });
  return { ...out, calls, logs, json: out.stdout ? JSON.parse(out.stdout) : undefined };
}

describe("handleInvocation", () => {
  it("ADD returns the plugin's result in the requested version and passes a full Request", async () => {
    const r = await invoke({ ...baseEnv, CNI_ARGS: "IP=10.9.0.7;K8S_POD_NAME=p" }, conf({ bridge: "br0" }));
    expect(r.exitCode).toBe(0);
    expect(r.stdout.endsWith("\n")).toBe(true);
    expect(r.json).toEqual({
      cniVersion: "1.1.0",
      interfaces: [{ name: "eth0", mac: "02:00:00:00:00:01", mtu: 1400, sandbox: baseEnv.CNI_NETNS }],
      ips: [
        { interface: 0, address: "10.9.0.2/24", gateway: "10.9.0.1" },
        { interface: 0, address: "fd09::2/64" },
      ],
      routes: [{ dst: "0.0.0.0/0", gw: "10.9.0.1", mtu: 1400 }],
      dns: { nameservers: ["10.9.0.1"] },
    });
    const req = r.calls[0]!.req;
    expect(req).toMatchObject({
      command: "ADD",
      containerId: "c0ffee",
      netns: baseEnv.CNI_NETNS,
      ifname: "eth0",
      path: ["/opt/cni/bin"],
      args: { IP: "10.9.0.7", K8S_POD_NAME: "p" },
    });
    expect(req.config).toMatchObject({ name: "toynet", bridge: "br0", cniVersion: "1.1.0" });
    expect(req.env).toEqual({ ...baseEnv, CNI_ARGS: "IP=10.9.0.7;K8S_POD_NAME=p" });
    expect(req.stdin.toString()).toContain('"bridge":"br0"');
  });

  it.each(SUPPORTED_VERSIONS)("ADD at %s answers in exactly that version", async (v) => {
    const r = await invoke(baseEnv, conf({ cniVersion: v }));
    expect(r.exitCode).toBe(0);
    expect(r.json.cniVersion).toBe(v);
    if (v === "0.1.0" || v === "0.2.0") {
      expect(r.json.ip4).toEqual({ ip: "10.9.0.2/24", gateway: "10.9.0.1", routes: [{ dst: "0.0.0.0/0", gw: "10.9.0.1" }] });
      expect(r.json.ips).toBeUndefined();
    } else {
      expect(r.json.ips).toHaveLength(2);
      expect(r.json.ips[0].version).toBe(v.startsWith("0.") ? "4" : undefined);
      expect(r.json.interfaces[0].mtu).toBe(v === "1.1.0" ? 1400 : undefined);
    }
  });

  it("ADD gives the plugin an upconverted prevResult", async () => {
    const r = await invoke(
      baseEnv,
      conf({ cniVersion: "0.2.0", prevResult: { cniVersion: "0.2.0", ip4: { ip: "10.1.1.1/24" } } }),
    );
    expect(r.exitCode).toBe(0);
    expect(r.calls[0]!.req.config.prevResult).toEqual({ cniVersion: "1.1.0", ips: [{ address: "10.1.1.1/24" }] });
  });

  it.each(["DEL", "CHECK"])("%s succeeds with empty stdout", async (cmd) => {
    const r = await invoke({ ...baseEnv, CNI_COMMAND: cmd }, conf());
    expect(r).toMatchObject({ stdout: "", exitCode: 0 });
    expect(r.calls.map((c) => c.command)).toEqual([cmd]);
  });

  it("DEL works without CNI_NETNS", async () => {
    const r = await invoke({ ...baseEnv, CNI_COMMAND: "DEL", CNI_NETNS: undefined }, conf());
    expect(r.exitCode).toBe(0);
    expect(r.calls[0]!.req.netns).toBe("");
  });

  it("GC and STATUS reach the plugin with only CNI_PATH / nothing set", async () => {
    const gc = await invoke({ CNI_COMMAND: "GC", CNI_PATH: "/opt/cni/bin" }, conf({ "cni.dev/valid-attachments": [] }));
    expect(gc).toMatchObject({ stdout: "", exitCode: 0 });
    expect(gc.calls[0]!.req).toMatchObject({ command: "GC", containerId: "", ifname: "" });
    const status = await invoke({ CNI_COMMAND: "STATUS" }, conf());
    expect(status).toMatchObject({ stdout: "", exitCode: 0 });
    expect(status.calls.map((c) => c.command)).toEqual(["STATUS"]);
  });

  it("a plugin without gc/status succeeds for GC and STATUS", async () => {
    const { gc: _gc, status: _status, ...bare } = toyPlugin();
    for (const cmd of ["GC", "STATUS"]) {
      const out = await handleInvocation(bare, { CNI_COMMAND: cmd, CNI_PATH: "/x" }, conf());
      expect(out).toEqual({ stdout: "", exitCode: 0 });
    }
  });

  it("STATUS reports the plugin's 50", async () => {
    const r = await invoke({ CNI_COMMAND: "STATUS" }, conf({ fail: { code: 50, msg: "no subnet lease yet" } }));
    expect(r.exitCode).toBe(1);
    expect(r.json).toEqual({ cniVersion: "1.1.0", code: 50, msg: "no subnet lease yet" });
  });

  describe("VERSION", () => {
    const supportedVersions = [...SUPPORTED_VERSIONS];
    it.each<[string, Buffer, string]>([
      ["empty stdin", Buffer.alloc(0), "1.1.0"],
      ["a config's version", Buffer.from('{"cniVersion":"0.3.1"}'), "0.3.1"],
      ["an unknown version", Buffer.from('{"cniVersion":"7.0.0"}'), "1.1.0"],
      ["garbage", Buffer.from("not json"), "1.1.0"],
    ])("with %s", async (_n, stdin, v) => {
      const r = await invoke({ CNI_COMMAND: "VERSION" }, stdin);
      expect(r.exitCode).toBe(0);
      expect(r.json).toEqual({ cniVersion: v, supportedVersions });
      expect(r.calls).toEqual([]);
    });
  });

  // Each row: env overrides, stdin, expected code, message pattern.
  it.each<[string, Record<string, string | undefined>, Buffer, number, RegExp]>([
    ["CHECK at 0.3.1", { CNI_COMMAND: "CHECK" }, conf({ cniVersion: "0.3.1" }), 1, /CHECK needs cniVersion 0\.4\.0/],
    ["GC at 1.0.0", { CNI_COMMAND: "GC" }, conf({ cniVersion: "1.0.0" }), 1, /GC needs cniVersion 1\.1\.0/],
    ["STATUS at 0.4.0", { CNI_COMMAND: "STATUS" }, conf({ cniVersion: "0.4.0" }), 1, /STATUS needs cniVersion 1\.1\.0/],
    ["unsupported version", {}, conf({ cniVersion: "0.9.0" }), 1, /"0\.9\.0" is not supported/],
    ["bad JSON", {}, Buffer.from("{"), 6, /not valid JSON/],
    ["empty stdin on ADD", {}, Buffer.alloc(0), 6, /no network configuration/],
    ["missing name", {}, Buffer.from('{"cniVersion":"1.0.0","type":"toy"}'), 7, /"name" is required/],
    ["missing command", { CNI_COMMAND: undefined }, conf(), 4, /CNI_COMMAND is not set/],
    ["unknown command", { CNI_COMMAND: "FROB" }, conf(), 4, /CNI_COMMAND "FROB"/],
    ["missing ifname", { CNI_IFNAME: undefined }, conf(), 4, /CNI_IFNAME/],
    ["unknown CNI_ARGS key", { CNI_ARGS: "MAC=x" }, conf(), 2, /"MAC"/],
    ["plugin CniError", {}, conf({ fail: { code: 11, msg: "busy", details: "lock held" } }), 11, /^busy$/],
    ["ADD at 0.2.0 without IPs", {}, conf({ cniVersion: "0.2.0", noIps: true }), 1, /cannot express the result in CNI 0\.2\.0/],
  ])("%s", async (name, overrides, stdin, code, msg) => {
    const r = await invoke({ ...baseEnv, ...overrides }, stdin);
    expect(r.exitCode, name).toBe(1);
    expect(r.json.code).toBe(code);
    expect(r.json.msg).toMatch(msg);
    expect(Object.keys(r.json).sort()).toEqual(
      r.json.details ? ["cniVersion", "code", "details", "msg"] : ["cniVersion", "code", "msg"],
    );
  });

  it("error replies carry the config's version when it is known", async () => {
    const r = await invoke({ ...baseEnv, CNI_IFNAME: "" }, conf({ cniVersion: "0.4.0" }));
    expect(r.json).toMatchObject({ cniVersion: "0.4.0", code: 4 });
    const e = await invoke(baseEnv, conf({ cniVersion: "0.4.0", fail: { code: 7, msg: "x", details: "d" } }));
    expect(e.json).toEqual({ cniVersion: "0.4.0", code: 7, msg: "x", details: "d" });
  });

  it("a missing CNI_COMMAND explains what the program is in details", async () => {
    const r = await invoke({}, Buffer.alloc(0));
    expect(r.json.details).toMatch(/berth-toy.*1\.1\.0/);
  });

  it("an unexpected exception is code 999, one line, stack only in the log", async () => {
    const r = await invoke(baseEnv, conf({ crash: true }));
    expect(r.exitCode).toBe(1);
    expect(r.json).toEqual({ cniVersion: "1.1.0", code: 999, msg: "internal error: boom" });
    expect(r.stdout).not.toContain("secretFrame");
    expect(r.logs.join("\n")).toContain("secretFrame");
  });

  it("refuses a CNI_NETNS that is our own network namespace (code 8) unless overridden", async () => {
    const own = "/proc/self/ns/net";
    const r = await invoke({ ...baseEnv, CNI_NETNS: own }, conf());
    expect(r.json).toMatchObject({ code: 8 });
    expect(r.calls).toEqual([]);
    const ok = await invoke({ ...baseEnv, CNI_NETNS: own, CNI_NETNS_OVERRIDE: "1" }, conf());
    expect(ok.exitCode).toBe(0);
  });
});

describe("runPluginMain (as a real process)", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "berth-entry-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const main = join(import.meta.dirname, "fixtures", "toy-plugin.main.ts");
  function run(env: Record<string, string>, input?: string | Buffer) {
    const r = spawnSync(process.execPath, ["--import", "tsx", main], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
      input,
      timeout: 30_000,
    });
    return { status: r.status, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
  }

  it("ADD prints the result and exits 0, even with a timer left running", () => {
    const r = run({ ...baseEnv, TOY_HANG: "1" }, conf({ cniVersion: "0.4.0" }));
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.cniVersion).toBe("0.4.0");
    expect(out.ips[0]).toEqual({ version: "4", interface: 0, address: "10.9.0.2/24", gateway: "10.9.0.1" });
  });

  it("VERSION works with stdin closed immediately and with no stdin at all", () => {
    const r = run({ CNI_COMMAND: "VERSION" }, "");
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ cniVersion: "1.1.0", supportedVersions: [...SUPPORTED_VERSIONS] });
    const noStdin = spawnSync(process.execPath, ["--import", "tsx", main], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", CNI_COMMAND: "VERSION" },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 30_000,
    });
    expect(noStdin.status).toBe(0);
    expect(JSON.parse(noStdin.stdout.toString()).supportedVersions).toHaveLength(SUPPORTED_VERSIONS.length);
  });

  it("an error prints JSON on stdout, exits 1, and logs to stderr", () => {
    const r = run({ ...baseEnv, CNI_IFNAME: "has space" }, conf());
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 4, msg: expect.stringContaining("CNI_IFNAME") });
    expect(r.stderr).toContain("CNI_IFNAME");
  });

  it("a crash keeps the stack off stdout and in BERTH_CNI_LOG", () => {
    const logFile = join(dir, "plugin.log");
    const r = run({ ...baseEnv, BERTH_CNI_LOG: logFile }, conf({ crash: true }));
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual({ cniVersion: "1.1.0", code: 999, msg: "internal error: boom" });
    expect(r.stderr).toBe("");
    expect(readFileSync(logFile, "utf8")).toContain("secretFrame");
  });

  it("the config's logFile is honoured", () => {
    const logFile = join(dir, "from-config.log");
    const r = run({ ...baseEnv, CNI_IFNAME: "" }, conf({ logFile }));
    expect(r.status).toBe(1);
    expect(readFileSync(logFile, "utf8")).toMatch(/error 4/);
  });

  it("stdin over 1 MiB is refused with code 5 without reading it all", () => {
    const huge = Buffer.alloc(8 * 1024 * 1024, 0x20);
    const r = run(baseEnv, huge);
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 5, msg: expect.stringMatching(/larger than 1048576 bytes/) });
  });
});

describe("readStdin", () => {
  it("reads a file descriptor to EOF and enforces the limit", async () => {
    const { openSync, writeFileSync, closeSync } = await import("node:fs");
    const dir = mkdtempSync(join(tmpdir(), "berth-stdin-"));
    try {
      const file = join(dir, "in.json");
      writeFileSync(file, "x".repeat(200_000));
      const fd = openSync(file, "r");
      expect(readStdin(1_000_000, fd).length).toBe(200_000);
      closeSync(fd);
      const fd2 = openSync(file, "r");
      expect(() => readStdin(100_000, fd2)).toThrow(/larger than 100000 bytes/);
      closeSync(fd2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
