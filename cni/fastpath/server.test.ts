// The CNI server in this process, with a probe plugin: what it offers each invocation
// (Request.host) — whether short netlink requests may run on the main thread (alone) or must go
// to the thread pool (concurrent), deferred lease syncs, and its own link retirer.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { testPrefix } from "../../testing/kernel.ts";
import type { InvocationHost, Plugin, Result } from "../protocol/types.ts";
import { type CniServer, startCniServer } from "./server.ts";
import { decodeResponse, encodeRequest } from "./wire.ts";

let dir: string;
let server: CniServer | undefined;

beforeEach(() => {
  dir = mkdtempSync(`/tmp/${testPrefix()}-`);
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

function call(socketPath: string, containerId: string, command = "ADD"): Promise<{ exitCode: number; stdout: string }> {
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
      CNI_COMMAND: command,
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
        const mine = [req.host.shortRequestsInline()];
        seen[req.containerId] = mine;
        if (!req.containerId.startsWith("alone")) {
          if (++arrived === 2) bothHere();
          await together;
          mine.push(req.host.shortRequestsInline());
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
    expect((await call(socketPath, "alone-after")).exitCode).toBe(0);

    expect(seen.alone).toEqual([true]);
    // Once both are in, neither may block the main thread on a lookup.
    expect(seen.one![1]).toBe(false);
    expect(seen.two![1]).toBe(false);
    expect(seen["alone-after"]).toEqual([true]);
  });
});

describe("CNI server: what each invocation is offered", () => {
  it("deferred lease syncs, and the link retirer of the server that serves it: two servers do not share one", async () => {
    const hosts: Record<string, InvocationHost> = {};
    const probe: Plugin = {
      name: "probe",
      async add(): Promise<Result> {
        return { cniVersion: "1.0.0" };
      },
      async del(req) {
        hosts[req.containerId] = req.host;
      },
      async check() {},
    };
    const first = join(dir, "first.sock");
    const second = join(dir, "second.sock");
    server = await startCniServer({ socketPath: first, plugins: { probe } });
    const other = await startCniServer({ socketPath: second, plugins: { probe } });
    try {
      expect(await call(first, "a", "DEL")).toEqual({ exitCode: 0, stdout: "" });
      expect(await call(second, "b", "DEL")).toEqual({ exitCode: 0, stdout: "" });
      expect(hosts.a!.deferSyncs).toBe(true);
      expect(hosts.a!.linkRetirer).toBeTypeOf("function");
      expect(hosts.b!.linkRetirer).toBeTypeOf("function");
      expect(hosts.b!.linkRetirer).not.toBe(hosts.a!.linkRetirer);
      // Closing one server leaves the other's invocations their retirer.
      await server.close();
      server = undefined;
      expect(await call(second, "c", "DEL")).toEqual({ exitCode: 0, stdout: "" });
      expect(hosts.c!.linkRetirer).toBe(hosts.b!.linkRetirer);
    } finally {
      await other.close();
    }
  });
});

describe("CNI server: connections off the common path", () => {
  // A probe whose ADD answers with `size` bytes of stdout (a Result's dns.search entry).
  const bigAnswer = (size: number): Plugin => ({
    name: "probe",
    async add(req): Promise<Result> {
      return { cniVersion: req.config.cniVersion, dns: { search: ["x".repeat(size)] } };
    },
    async del() {},
    async check() {},
  });
  const env = (cid: string) => ({
    CNI_COMMAND: "ADD",
    CNI_CONTAINERID: cid,
    CNI_NETNS: "/proc/self/ns/net",
    CNI_IFNAME: "eth0",
    CNI_PATH: "/nonexistent",
    CNI_NETNS_OVERRIDE: "1",
  });
  const request = (cid: string) =>
    encodeRequest({ type: "probe", env: env(cid), stdin: Buffer.from('{"cniVersion":"1.0.0","name":"probe","type":"probe"}') });

  /** Sends `parts` with `gapMs` between them and reads the whole answer, at `readDelayMs` after connecting. */
  function exchange(path: string, parts: Buffer[], gapMs = 0, readDelayMs = 0): Promise<{ raw: Buffer }> {
    return new Promise((done, fail) => {
      const s = connect(path);
      const chunks: Buffer[] = [];
      s.on("error", fail);
      s.on("connect", async () => {
        for (const [i, p] of parts.entries()) {
          if (i > 0 && gapMs) await new Promise((r) => setTimeout(r, gapMs));
          s.write(p);
        }
      });
      if (readDelayMs) s.pause();
      setTimeout(() => s.resume(), readDelayMs);
      s.on("data", (b: Buffer) => chunks.push(b));
      s.on("close", () => done({ raw: Buffer.concat(chunks) }));
    });
  }

  it("a request that arrives in pieces, 50 ms apart, is read to its end and answered", async () => {
    server = await startCniServer({ socketPath: join(dir, "cni.sock"), plugins: { probe: bigAnswer(10) } });
    const req = request("pieces");
    const r = await exchange(server.socketPath, [req.subarray(0, 5), req.subarray(5, 40), req.subarray(40)], 50);
    const res = decodeResponse(r.raw);
    expect(res.exitCode, res.stderr.toString()).toBe(0);
    expect(JSON.parse(res.stdout.toString()).dns.search[0]).toBe("x".repeat(10));
  });

  it("an answer larger than the socket buffer reaches a slow reader whole", async () => {
    server = await startCniServer({ socketPath: join(dir, "cni.sock"), plugins: { probe: bigAnswer(3 << 20) } });
    const r = await exchange(server.socketPath, [request("big")], 0, 300);
    const res = decodeResponse(r.raw);
    expect(res.exitCode, res.stderr.toString()).toBe(0);
    expect(JSON.parse(res.stdout.toString()).dns.search[0]).toHaveLength(3 << 20);
  });

  it("a wrong frame is a decode error; a launcher that closes early or never finishes is dropped", async () => {
    const lines: string[] = [];
    server = await startCniServer({
      socketPath: join(dir, "cni.sock"),
      plugins: { probe: bigAnswer(1) },
      requestTimeoutMs: 300,
      log: (l) => lines.push(l),
    });
    const wrong = request("wrong");
    wrong.writeUInt16LE(2, 6); // kind: a response frame
    const bad = decodeResponse((await exchange(server.socketPath, [wrong])).raw);
    expect(bad.exitCode).toBe(1);
    expect(JSON.parse(bad.stdout.toString())).toMatchObject({ code: 6 });
    // Half a request, then the launcher's side closes: no answer, the server goes on.
    await new Promise<void>((done, fail) => {
      const s = connect(server!.socketPath, () => s.end(request("half").subarray(0, 20)));
      s.on("error", fail);
      s.on("close", () => done());
      s.resume();
    });
    // Half a request and then silence: dropped after requestTimeoutMs.
    const t0 = performance.now();
    const silent = await exchange(server.socketPath, [request("silent").subarray(0, 20)]);
    expect(silent.raw.length).toBe(0);
    expect(performance.now() - t0).toBeGreaterThan(250);
    expect(lines.join("\n")).toMatch(/closed the connection before sending its whole request/);
    expect(lines.join("\n")).toMatch(/no complete request within 300 ms/);
    // And a whole request is still served.
    const ok = decodeResponse((await exchange(server.socketPath, [request("after")])).raw);
    expect(ok.exitCode).toBe(0);
  });

  it("close() lets an invocation in flight answer, then removes the socket file", async () => {
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    const slow: Plugin = {
      ...bigAnswer(1),
      async add(req): Promise<Result> {
        await held;
        return { cniVersion: req.config.cniVersion };
      },
    };
    server = await startCniServer({ socketPath: join(dir, "cni.sock"), plugins: { probe: slow } });
    const path = server.socketPath;
    const answer = exchange(path, [request("inflight")]);
    await new Promise((r) => setTimeout(r, 100));
    const closing = server.close();
    server = undefined;
    await new Promise((r) => setTimeout(r, 50));
    release();
    await closing;
    expect(decodeResponse((await answer).raw).exitCode).toBe(0);
    expect(existsSync(path)).toBe(false);
  });
});
