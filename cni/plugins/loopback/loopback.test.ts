// berth-loopback against the real kernel, in-process: lo comes up inside the container netns
// (read back with ip -j, and 127.0.0.1 answers), chained prevResult passes through, DEL and
// CHECK behave as the spec asks.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { addNetns, delNetns, ipJson, sh, testPrefix } from "../../../testing/kernel.ts";
import { handleInvocation } from "../../protocol/invocation.ts";
import type { Result } from "../../protocol/types.ts";
import { loopbackPlugin } from "./loopback.ts";

type Reply = Result & { code?: number; msg?: string };

let ns: string;
let path: string;

beforeEach(() => {
  ns = `${testPrefix()}-lo`;
  path = `/run/netns/${ns}`;
  addNetns(ns);
});

afterEach(() => {
  delNetns(ns);
});

const conf = (extra: Record<string, unknown> = {}) => ({ cniVersion: "1.1.0", name: "lo-net", type: "berth-loopback", ...extra });

async function cni(command: string, config: Record<string, unknown>, netns: string | undefined = path) {
  const env = { CNI_COMMAND: command, CNI_CONTAINERID: "ctr-lo", CNI_NETNS: netns, CNI_IFNAME: "lo", CNI_PATH: "/usr/lib/cni" };
  const out = await handleInvocation(loopbackPlugin, env, Buffer.from(JSON.stringify(config)));
  return { exitCode: out.exitCode, stdout: out.stdout, json: (out.stdout.trim() ? JSON.parse(out.stdout) : {}) as Reply };
}

function loUp(): boolean {
  return (ipJson<{ flags: string[] }>(["link", "show", "dev", "lo"], ns)[0]?.flags ?? []).includes("UP");
}

function ping(ip: string): boolean {
  try {
    sh("ip", ["netns", "exec", ns, "busybox", "ping", "-c1", "-W1", ip]);
    return true;
  } catch {
    return false;
  }
}

describe("berth-loopback", () => {
  it("ADD brings lo up in the container; 127.0.0.1 and ::1 answer; the result names lo's addresses", async () => {
    expect(loUp()).toBe(false);
    expect(ping("127.0.0.1")).toBe(false);
    const r = await cni("ADD", conf());
    expect(r.exitCode).toBe(0);
    expect(loUp()).toBe(true);
    expect(ping("127.0.0.1")).toBe(true);
    expect(ping("::1")).toBe(true);
    expect(r.json.interfaces).toEqual([{ name: "lo", mac: "00:00:00:00:00:00", sandbox: path }]);
    const kernelAddrs = ipJson<{ addr_info: { local: string; prefixlen: number }[] }>(
      ["addr", "show", "dev", "lo"],
      ns,
    )[0]!.addr_info.map((a) => `${a.local}/${a.prefixlen}`);
    expect(r.json.ips!.map((i) => i.address).sort()).toEqual(kernelAddrs.sort());
  });

  it("converts its result to an older requested version (0.3.1)", async () => {
    const r = await cni("ADD", conf({ cniVersion: "0.3.1" }));
    expect(r.exitCode).toBe(0);
    expect(r.json.cniVersion).toBe("0.3.1");
    expect(r.json.ips!.map((i) => i.address)).toContain("127.0.0.1/8");
  });

  it("chained after another plugin, passes prevResult through unchanged", async () => {
    const prev = {
      cniVersion: "1.1.0",
      interfaces: [{ name: "eth0", mac: "02:00:00:00:00:01", sandbox: path }],
      ips: [{ address: "10.9.0.5/24", gateway: "10.9.0.1", interface: 0 }],
      routes: [{ dst: "0.0.0.0/0", gw: "10.9.0.1" }],
    };
    const r = await cni("ADD", conf({ prevResult: prev }));
    expect(r.exitCode).toBe(0);
    expect(r.json).toEqual(prev);
    expect(loUp()).toBe(true);
  });

  it("CHECK passes while lo is up and fails once it is down; DEL takes it down and is idempotent without the netns", async () => {
    const added = await cni("ADD", conf());
    expect((await cni("CHECK", conf({ prevResult: added.json }))).exitCode).toBe(0);
    sh("ip", ["-n", ns, "link", "set", "lo", "down"]);
    const broken = await cni("CHECK", conf({ prevResult: added.json }));
    expect(broken.exitCode).toBe(1);
    expect(broken.json.msg).toContain("lo is down");

    sh("ip", ["-n", ns, "link", "set", "lo", "up"]);
    expect((await cni("DEL", conf())).exitCode).toBe(0);
    expect(loUp()).toBe(false);
    expect((await cni("DEL", conf())).exitCode).toBe(0);
    delNetns(ns);
    const gone = await cni("DEL", conf());
    expect(gone.exitCode).toBe(0);
    expect(gone.stdout).toBe("");
    expect((await cni("DEL", conf(), undefined)).exitCode).toBe(0);
  });

  it("ADD into a netns that does not exist is code 4 naming CNI_NETNS", async () => {
    const r = await cni("ADD", conf(), `/run/netns/${ns}-missing`);
    expect(r.exitCode).toBe(1);
    expect(r.json.code).toBe(4);
    expect(r.json.msg).toContain("CNI_NETNS");
  });
});
