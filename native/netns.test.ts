import { spawn } from "node:child_process";
import { existsSync, readlinkSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { delNetns, ipJson, sh, testPrefix } from "../testing/kernel.ts";
import { Rtnl } from "./netlink/socket.ts";
import { createNetns, deleteNetns, Netns, NetnsError } from "./netns.ts";

const made: string[] = [];
afterEach(() => {
  for (const n of made.splice(0)) delNetns(n);
});

function fresh(suffix: string): string {
  const name = `${testPrefix()}-${suffix}`;
  made.push(name);
  return name;
}

const threadNetns = () => readlinkSync("/proc/thread-self/ns/net");
// Taken before any window is opened in this process: "home" must mean this one.
const startNetns = threadNetns();

describe("named namespaces", () => {
  it("creates one that iproute2 sees and deletes it", () => {
    const name = fresh("c");
    expect(createNetns(name)).toBe(`/run/netns/${name}`);
    expect(sh("ip", ["netns", "list"])).toContain(name);
    sh("ip", ["-n", name, "link", "set", "lo", "up"]); // usable by another process
    expect(() => createNetns(name)).toThrow(`network namespace ${name} already exists`);
    expect(deleteNetns(name)).toBe(true);
    expect(existsSync(`/run/netns/${name}`)).toBe(false);
    expect(deleteNetns(name)).toBe(false);
  });

  it("refuses bad names and non-namespace paths", () => {
    expect(() => createNetns("../etc")).toThrow(NetnsError);
    expect(() => Netns.open("/etc/hostname")).toThrow("/etc/hostname is not a network namespace");
    expect(() => Netns.open(`${testPrefix()}-nope`)).toThrow(/does not exist/);
  });
});

describe("Netns", () => {
  it("opens another process's namespace by /proc/PID/ns/net", async () => {
    const name = fresh("p");
    createNetns(name);
    const child = spawn("ip", ["netns", "exec", name, "sleep", "30"], { stdio: "ignore" });
    try {
      // Wait until the child has entered the namespace.
      const probe = Netns.open(name);
      const want = probe.enter(threadNetns);
      probe.close();
      // The first window this process opens must also return to where it started.
      expect(threadNetns()).toBe(startNetns);
      let path = "";
      for (let i = 0; i < 200; i++) {
        path = `/proc/${child.pid}/ns/net`;
        try {
          if (readlinkSync(path) === want) break;
        } catch {}
        await new Promise((r) => setTimeout(r, 10));
      }
      const ns = Netns.open(path);
      try {
        expect(ns.enter(threadNetns)).toBe(want);
      } finally {
        ns.close();
      }
    } finally {
      child.kill(); // by PID (the ChildProcess handle)
    }
  });

  it("the window returns to the home namespace, also when the callback throws", () => {
    const name = fresh("w");
    createNetns(name);
    const ns = Netns.open(name);
    try {
      const home = threadNetns();
      expect(home).toBe(startNetns);
      const inside = ns.enter(threadNetns);
      expect(inside).not.toBe(home);
      expect(threadNetns()).toBe(home);
      expect(() =>
        ns.enter(() => {
          throw new Error("boom");
        }),
      ).toThrow("boom");
      expect(threadNetns()).toBe(home);
    } finally {
      ns.close();
    }
  });

  it("refuses an async callback (and still returns home)", () => {
    const name = fresh("a");
    createNetns(name);
    const ns = Netns.open(name);
    try {
      const home = threadNetns();
      expect(() => ns.enter(async () => 1)).toThrow("the callback must be synchronous");
      expect(threadNetns()).toBe(home);
    } finally {
      ns.close();
    }
  });

  it("a netlink socket opened inside the window keeps working in that namespace afterwards", () => {
    const name = fresh("s");
    createNetns(name);
    const ns = Netns.open(name);
    const rtnl = ns.enter(() => Rtnl.open());
    ns.close();
    try {
      rtnl.linkAdd({ kind: "bridge", name: "inwin" });
      expect(ipJson(["link", "show", "dev", "inwin"], name)[0].ifname).toBe("inwin");
      expect(ipJson(["link", "show"]).some((l) => l.ifname === "inwin")).toBe(false);
    } finally {
      rtnl.close();
    }
  });
});
