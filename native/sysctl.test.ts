import { readFileSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { addNetns, delNetns, sh, testPrefix } from "../testing/kernel.ts";
import { Netns } from "./netns.ts";
import { readSysctl, SysctlError, sysctlPath, writeSysctl } from "./sysctl.ts";

let name: string;

beforeEach(() => {
  name = `${testPrefix()}-s`;
  addNetns(name);
});

afterEach(() => delNetns(name));

function nsSysctl(key: string): string {
  return sh("ip", ["netns", "exec", name, "sysctl", "-n", key]).trim();
}

describe("sysctl in a network namespace", () => {
  it("writes and reads the target namespace's value, not the host's", () => {
    const key = "/proc/sys/net/core/somaxconn";
    const host = readFileSync(key, "utf8").trim();
    const want = host === "1234" ? "1235" : "1234"; // neither the host's value nor a new netns's default
    expect(readSysctl("net.core.somaxconn", name)).not.toBe(want);
    writeSysctl("net.core.somaxconn", want, name);
    // Read back by a process that lives in the namespace.
    expect(nsSysctl("net.core.somaxconn")).toBe(want);
    expect(readSysctl("net.core.somaxconn", name)).toBe(want);
    // The host kept its own value, seen by another process and by this thread after the window.
    expect(sh("cat", [key]).trim()).toBe(host);
    expect(readSysctl("net.core.somaxconn")).toBe(host);
    expect(readFileSync(key, "utf8").trim()).toBe(host);
  });

  it("takes an open Netns, and per-interface keys whose names contain dots", () => {
    sh("ip", ["-n", name, "link", "add", "br.10", "type", "bridge"]);
    const ns = Netns.open(name);
    try {
      writeSysctl(["net", "ipv6", "conf", "br.10", "accept_ra"], 0, ns);
      expect(nsSysctl("net/ipv6/conf/br.10/accept_ra")).toBe("0");
      writeSysctl("net/ipv6/conf/br.10/accept_ra", "2", ns);
      expect(readSysctl(["net", "ipv6", "conf", "br.10", "accept_ra"], ns)).toBe("2");
      expect(nsSysctl("net/ipv6/conf/br.10/accept_ra")).toBe("2");
    } finally {
      ns.close();
    }
  });

  it("gives typed errors for missing keys, bad values and unsafe paths", () => {
    expect(() => readSysctl("net.ipv4.no_such_key", name)).toThrow(SysctlError);
    expect(() => readSysctl("net.ipv4.no_such_key", name)).toThrow("sysctl net.ipv4.no_such_key does not exist");
    expect(() => writeSysctl("net.ipv4.conf.all.rp_filter", "banana", name)).toThrow(/invalid value/);
    expect(() => sysctlPath("net..ipv4")).toThrow(SysctlError);
    expect(() => sysctlPath(["net", "..", "..", "etc"])).toThrow('invalid sysctl key "net/../../etc"');
    expect(() => readSysctl("net.ipv4.ip_forward", `${name}-none`)).toThrow("does not exist");
  });
});
