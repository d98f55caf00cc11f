// The fast path (agent) and the cold path (Node per call) must be indistinguishable to a
// runtime: the same requests through both give byte-identical stdout, the same exit code and
// the same log lines, once generated values (container ids, netns paths, allocated addresses,
// MACs, host veth names, timestamps, pids) are masked.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { type CniInvocation, execPlugin } from "../../testing/plugin-exec.ts";
import { Sandbox } from "../../testing/sandbox.ts";
import { type NetworkShape, networkConfig } from "../lib/cni-netconf.ts";
import { ServerProcess } from "./server-process.ts";

const CNI = resolve(import.meta.dirname, "../../build/cni");
const built = existsSync(join(CNI, "berth-bridge")) && existsSync(resolve(CNI, "../cni-node/berth-bridge.cjs"));

type Path = "fast" | "cold";

interface Normalised {
  exitCode: number | null;
  stdout: string;
  stderr: string;
}

describe.skipIf(!built)("fast path and cold path give identical answers", () => {
  const dir = mkdtempSync(`/tmp/${testPrefix()}-`);
  const socketPath = join(dir, "cni.sock");
  let server: ServerProcess;
  let sandbox: Sandbox;
  let net: NetworkShape;

  beforeAll(async () => {
    server = await ServerProcess.start(socketPath);
    sandbox = new Sandbox();
    const { subnet, base } = sandbox.allocateSubnet(24);
    net = { name: `${sandbox.prefix}-par`, subnet, base };
  });

  afterAll(async () => {
    await server?.stop();
    sandbox?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  function mask(text: string, path: Path, tag: string): string {
    const base = net.base.replace(/\./g, "\\.");
    return text
      .replaceAll(`${sandbox.prefix}-${path}${tag}`, "<cid>")
      .replace(/\/run\/netns\/[\w.-]+/g, "<netns>")
      .replace(new RegExp(`${base}\\.(?!0\\b|1\\b)\\d+`, "g"), "<ip>")
      .replace(/([0-9a-f]{2}:){5}[0-9a-f]{2}/gi, "<mac>")
      .replace(/\b(veth[0-9a-f]{8}|bv[0-9a-f]{12})\b/g, "<veth>")
      .replace(/^\d{4}-\d\d-\d\dT[\d:.]+Z (\S+)\[\d+\] /gm, "<time> $1[<pid>] ");
  }

  /** Runs the invocation built for each path and returns both outcomes, masked. */
  async function onBothPaths(tag: string, make: (path: Path, cid: string) => Omit<CniInvocation, "cniPath">) {
    const out: Record<Path, Normalised> = {} as Record<Path, Normalised>;
    for (const path of ["fast", "cold"] as const) {
      const inv = make(path, `${sandbox.prefix}-${path}${tag}`);
      const before = server.served();
      const o = await execPlugin({
        cniPath: CNI,
        ...inv,
        env: { ...inv.env, BERTH_CNI_SOCKET: path === "fast" ? socketPath : "off" },
      });
      // Prove which path answered: the agent served exactly the fast call.
      expect(server.served() - before, `${tag} ${path}: calls served by the agent`).toBe(path === "fast" ? 1 : 0);
      out[path] = { exitCode: o.exitCode, stdout: mask(o.stdout, path, tag), stderr: mask(o.stderr, path, tag) };
    }
    return out;
  }

  const conf = (version: string, type = "berth-bridge") =>
    networkConfig({ cniPath: CNI, type, ipam: "berth-host-local" }, sandbox, net, version);

  it("VERSION and the spec's error replies", async () => {
    const cases: [string, (path: Path, cid: string) => Omit<CniInvocation, "cniPath">][] = [
      ["v1", () => ({ type: "berth-bridge", env: { CNI_COMMAND: "VERSION" }, stdin: { cniVersion: "0.4.0" } })],
      ["v2", () => ({ type: "berth-bridge", env: { CNI_COMMAND: "VERSION" } })],
      ["v3", () => ({ type: "berth-loopback", env: { CNI_COMMAND: "VERSION" }, stdin: "x".repeat(1024 * 1024 + 10) })],
      ["e1", () => ({ type: "berth-bridge", env: { CNI_COMMAND: "ADD" }, stdin: conf("1.0.0") })],
      [
        "e2",
        (_p, cid) => ({
          type: "berth-bridge",
          env: { CNI_COMMAND: "ADD", CNI_CONTAINERID: cid, CNI_NETNS: "/run/netns/none", CNI_IFNAME: "eth0" },
          stdin: "{not json",
        }),
      ],
      [
        "e3",
        (_p, cid) => ({
          type: "berth-bridge",
          env: { CNI_COMMAND: "ADD", CNI_CONTAINERID: cid, CNI_NETNS: "/run/netns/none", CNI_IFNAME: "eth0" },
          stdin: { ...conf("1.0.0"), cniVersion: "9.9.9" },
        }),
      ],
      [
        "e4",
        (_p, cid) => ({
          type: "berth-bridge",
          env: { CNI_COMMAND: "ADD", CNI_CONTAINERID: cid, CNI_NETNS: "/run/netns/none", CNI_IFNAME: "eth0" },
          stdin: `{"cniVersion":"0.4.0","x":"${"y".repeat(1024 * 1024)}"}`,
        }),
      ],
      [
        "e5",
        (_p, cid) => ({
          type: "berth-bridge",
          env: { CNI_COMMAND: "CHECK", CNI_CONTAINERID: cid, CNI_NETNS: "/run/netns/none", CNI_IFNAME: "eth0" },
          stdin: conf("0.3.1"),
        }),
      ],
      ["e6", (_p, cid) => ({ type: "berth-bridge", env: { CNI_COMMAND: "FROB", CNI_CONTAINERID: cid }, stdin: conf("1.1.0") })],
      [
        "e7",
        (_p, cid) => ({
          type: "berth-ptp",
          env: { CNI_COMMAND: "ADD", CNI_CONTAINERID: cid, CNI_NETNS: "/run/netns/none", CNI_IFNAME: "eth0/x", CNI_PATH: CNI },
          stdin: conf("1.0.0", "berth-ptp"),
        }),
      ],
      [
        "e8",
        (_p, cid) => ({
          type: "berth-bridge",
          env: { CNI_COMMAND: "ADD", CNI_CONTAINERID: cid, CNI_NETNS: "/proc/self/ns/net", CNI_IFNAME: "eth0", CNI_PATH: CNI },
          stdin: conf("1.0.0"),
        }),
      ],
    ];
    for (const [tag, make] of cases) {
      const r = await onBothPaths(tag, make);
      expect(r.fast, `case ${tag}`).toEqual(r.cold);
      if (tag.startsWith("e")) expect(r.fast.exitCode, `case ${tag} fails`).toBe(1);
    }
  });

  it("ADD (1.1.0, 0.4.0, 0.3.1, 0.2.0), CHECK, DEL twice, GC, STATUS on a real bridge", { timeout: 60_000 }, async () => {
    for (const version of ["1.1.0", "0.4.0", "0.3.1", "0.2.0"]) {
      const tag = `a${version.replace(/\./g, "")}`;
      const netns: Record<Path, string> = {
        fast: sandbox.createNetns(`f${tag}`).path,
        cold: sandbox.createNetns(`c${tag}`).path,
      };
      const env = (cmd: string, path: Path, cid: string) => ({
        CNI_COMMAND: cmd,
        CNI_CONTAINERID: cid,
        CNI_NETNS: netns[path],
        CNI_IFNAME: "eth0",
        CNI_PATH: CNI,
      });
      const add = await onBothPaths(tag, (path, cid) => ({
        type: "berth-bridge",
        env: env("ADD", path, cid),
        stdin: conf(version),
      }));
      expect(add.fast).toEqual(add.cold);
      expect(add.fast.exitCode, add.fast.stdout).toBe(0);
      expect(add.fast.stdout).toContain("<ip>");
      // ADD of an attachment that exists: the same error on both paths.
      const again = await onBothPaths(tag, (path, cid) => ({
        type: "berth-bridge",
        env: env("ADD", path, cid),
        stdin: conf(version),
      }));
      expect(again.fast).toEqual(again.cold);
      expect(again.fast.exitCode).toBe(1);
      if (version !== "0.2.0" && version !== "0.3.1") {
        const check = await onBothPaths(tag, (path, cid) => ({
          type: "berth-bridge",
          env: env("CHECK", path, cid),
          stdin: conf(version),
        }));
        expect(check.fast).toEqual(check.cold);
      }
      for (const round of [1, 2]) {
        const del = await onBothPaths(tag, (path, cid) => ({
          type: "berth-bridge",
          env: env("DEL", path, cid),
          stdin: conf(version),
        }));
        expect(del.fast, `DEL round ${round}`).toEqual(del.cold);
        expect(del.fast.exitCode, del.fast.stdout).toBe(0);
      }
    }
    const gc = await onBothPaths("gc", () => ({
      type: "berth-bridge",
      env: { CNI_COMMAND: "GC", CNI_PATH: CNI },
      stdin: { ...conf("1.1.0"), "cni.dev/valid-attachments": [] },
    }));
    expect(gc.fast).toEqual(gc.cold);
    expect(gc.fast.exitCode).toBe(0);
    const status = await onBothPaths("st", () => ({
      type: "berth-bridge",
      env: { CNI_COMMAND: "STATUS", CNI_PATH: CNI },
      stdin: conf("1.1.0"),
    }));
    expect(status.fast).toEqual(status.cold);
    expect(status.fast.exitCode).toBe(0);
  });
});
