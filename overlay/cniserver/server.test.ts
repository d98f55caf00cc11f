// The CNI server in this process, with a probe plugin: how it tells the netlink layer whether
// short requests may run on the main thread (alone) or must go to the thread pool (concurrent).
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Plugin, Result } from "../../cni/spec/types.ts";
import { Rtnl } from "../../native/netlink/socket.ts";
import { testPrefix } from "../../testing/kernel.ts";
import { decodeResponse, encodeRequest } from "./protocol.ts";
import { type CniServer, startCniServer } from "./server.ts";

let dir: string;
let server: CniServer | undefined;

beforeEach(() => {
  dir = mkdtempSync(`/tmp/${testPrefix()}-`);
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  Rtnl.shortRequestsInline = () => true;
  rmSync(dir, { recursive: true, force: true });
});

function call(socketPath: string, containerId: string): Promise<{ exitCode: number; stdout: string }> {
  return new Promise((done, fail) => {
    const s = connect(socketPath);
    const chunks: Buffer[] = [];
    s.on("data", (b: Buffer) => chunks.push(b));
    s.on("error", fail);
    s.on("end", () => {
      const r = decodeResponse(Buffer.concat(chunks));
      done({ exitCode: r.exitCode, stdout: r.stdout.toString() });
    });
    const env = {
      CNI_COMMAND: "ADD",
      CNI_CONTAINERID: containerId,
      CNI_NETNS: "/proc/self/ns/net",
      CNI_IFNAME: "eth0",
      CNI_PATH: "/nonexistent",
      CNI_NETNS_OVERRIDE: "1",
    };
    s.write(encodeRequest({ type: "probe", env, stdin: Buffer.from('{"cniVersion":"1.0.0","name":"probe","type":"probe"}') }));
  });
}

describe("CNI server: lookups inline or on the thread pool", () => {
  it("inline while one invocation runs, on the pool while two do, inline again after", async () => {
    const seen: Record<string, boolean[]> = {};
    let arrived = 0;
    let bothHere: () => void = () => {};
    const together = new Promise<void>((r) => (bothHere = r));
    const probe: Plugin = {
      name: "probe",
      async add(req): Promise<Result> {
        const mine = [Rtnl.shortRequestsInline()];
        seen[req.containerId] = mine;
        if (req.containerId !== "alone") {
          if (++arrived === 2) bothHere();
          await together;
          mine.push(Rtnl.shortRequestsInline());
        }
        return { cniVersion: "1.0.0" };
      },
      async del() {},
      async check() {},
    };
    const socketPath = join(dir, "cni.sock");
    server = await startCniServer({ socketPath, plugins: { probe } });

    expect(await call(socketPath, "alone")).toEqual({ exitCode: 0, stdout: '{"cniVersion":"1.0.0"}\n' });
    const pair = await Promise.all([call(socketPath, "one"), call(socketPath, "two")]);
    expect(pair.map((r) => r.exitCode)).toEqual([0, 0]);
    expect((await call(socketPath, "alone")).exitCode).toBe(0);

    expect(seen.alone).toEqual([true]);
    // Once both are in, neither may block the main thread on a lookup.
    expect(seen.one![1]).toBe(false);
    expect(seen.two![1]).toBe(false);
    expect(Rtnl.shortRequestsInline()).toBe(true);
  });
});
