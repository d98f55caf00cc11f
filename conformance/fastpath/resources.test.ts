// The agent runs plugin code for its whole life: 200 ADD/DEL cycles must leave its open file
// descriptors (netlink sockets, netns fds, databases) exactly as they were.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import { networkConfig } from "../lib/cni-netconf.ts";
import { describeOutcome, execPlugin } from "../lib/plugin-exec.ts";
import { Sandbox } from "../lib/sandbox.ts";
import { ServerProcess } from "./server-process.ts";

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
