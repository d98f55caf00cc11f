// The agent runs plugin code for its whole life: 200 ADD/DEL cycles must leave its open file
// descriptors (netlink sockets, netns fds, databases) exactly as they were, and running out of
// descriptors must not stop it for good.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { describeOutcome, execPlugin } from "../../testing/plugin-exec.ts";
import { Sandbox } from "../../testing/sandbox.ts";
import { networkConfig } from "../lib/cni-netconf.ts";
import { ServerProcess } from "./server-process.ts";
import { decodeResponse, encodeRequest } from "./wire.ts";

const CNI = resolve(import.meta.dirname, "../../build/cni");
const built = existsSync(join(CNI, "berth-bridge"));

describe.skipIf(!built)("agent resources", () => {
  const dir = mkdtempSync(`/tmp/${testPrefix()}-`);
  const socketPath = join(dir, "cni.sock");
  const sandbox = new Sandbox();
  let server: ServerProcess | undefined;

  afterAll(async () => {
    await server?.stop();
    sandbox.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const type of ["berth-bridge", "berth-ptp"]) {
    it(`${type}: 200 ADD/DEL cycles leak no file descriptor in the agent`, { timeout: 120_000 }, async () => {
      server ??= await ServerProcess.start(socketPath);
      const { subnet, base } = sandbox.allocateSubnet(24);
      const net = { name: `${sandbox.prefix}-${type.slice(6, 9)}`, subnet, base };
      const conf = networkConfig({ cniPath: CNI, type, ipam: "berth-host-local" }, sandbox, net, "1.0.0");
      const ns = sandbox.createNetns("fd");
      const cycle = async (i: number) => {
        for (const command of ["ADD", "DEL"]) {
          const o = await execPlugin({
            cniPath: CNI,
            type,
            env: {
              CNI_COMMAND: command,
              CNI_CONTAINERID: `${sandbox.prefix}-fd${i}`,
              CNI_NETNS: ns.path,
              CNI_IFNAME: "eth0",
              BERTH_CNI_SOCKET: socketPath,
            },
            stdin: conf,
          });
          if (o.exitCode !== 0) throw new Error(`${command} ${i}: ${describeOutcome(o)}`);
        }
      };
      // Warm-up: modules load, caches fill.
      for (let i = 0; i < 5; i++) await cycle(i);
      // Kinds, not inode numbers: a socket closed and another opened (the link retirer's, a
      // launcher connection being torn down) is no leak; one more of a kind is.
      const kinds = () =>
        server!
          .openFds()
          .map((t) => t.replace(/^(socket|pipe|anon_inode):\[?\d*\]?$/, "$1"))
          .sort();
      // The warm-up's last DELs still delete links in the background (each on a socket of its
      // own): count once that has settled, i.e. two readings 200 ms apart agree.
      const settled = async () => {
        let last = kinds();
        for (let t = 0; t < 30; t++) {
          await new Promise((r) => setTimeout(r, 200));
          const now = kinds();
          if (JSON.stringify(now) === JSON.stringify(last)) return now;
          last = now;
        }
        return last;
      };
      const before = await settled();
      const servedBefore = server.served();
      for (let i = 5; i < 205; i++) await cycle(i);
      expect((await server.servedWhen(servedBefore + 400)) - servedBefore).toBe(400);
      // DEL retires links and deletes them in the background: give in-flight deletes a moment.
      let after = kinds();
      for (let t = 0; t < 30 && JSON.stringify(after) !== JSON.stringify(before); t++) {
        await new Promise((r) => setTimeout(r, 100));
        after = kinds();
      }
      expect(after).toEqual(before);
      sandbox.deleteNetns(ns.name);
    });
  }
});

describe.skipIf(!built)("agent out of file descriptors", () => {
  const BUNDLE = resolve(import.meta.dirname, "../../build/berth.cjs");

  it("pauses accepting while accept4 fails with EMFILE, then serves again", { timeout: 60_000 }, async () => {
    const dir = mkdtempSync(`/tmp/${testPrefix()}-`);
    const socketPath = join(dir, "cni.sock");
    // 96 descriptors: the agent's own take a few dozen, so idle launchers exhaust the rest.
    const agent = spawn("prlimit", ["--nofile=96:96", process.execPath, BUNDLE, "cni-server", "--socket", socketPath], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    agent.stdout.on("data", (b: Buffer) => (out += b.toString()));
    agent.stderr.on("data", (b: Buffer) => (out += b.toString()));
    const exited = new Promise((r) => agent.once("exit", r));
    const waitFor = async (re: RegExp, ms: number) => {
      for (let t = 0; t < ms && !re.test(out); t += 20) await new Promise((r) => setTimeout(r, 20));
      return re.test(out);
    };
    const idle: Socket[] = [];
    try {
      expect(await waitFor(/listening /, 20_000), out).toBe(true);
      // Launchers that connect and send nothing: each holds one of the agent's descriptors.
      for (let i = 0; i < 150; i++) {
        const s = connect(socketPath);
        s.on("error", () => {});
        idle.push(s);
      }
      expect(await waitFor(/EMFILE.*accepting again in \d+ ms/, 10_000), out).toBe(true);
      for (const s of idle) s.destroy();
      const answer = await new Promise<Buffer>((done, fail) => {
        const s = connect(socketPath);
        const chunks: Buffer[] = [];
        s.on("data", (b: Buffer) => chunks.push(b));
        s.on("error", fail);
        s.on("close", () => done(Buffer.concat(chunks)));
        s.write(
          encodeRequest({ type: "berth-bridge", env: { CNI_COMMAND: "VERSION" }, stdin: Buffer.from('{"cniVersion":"1.0.0"}') }),
        );
      });
      const res = decodeResponse(answer);
      expect(res.exitCode, res.stderr.toString()).toBe(0);
      expect(JSON.parse(res.stdout.toString()).supportedVersions).toContain("1.1.0");
    } finally {
      for (const s of idle) s.destroy();
      agent.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
