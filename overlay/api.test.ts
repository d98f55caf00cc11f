// The HTTP API over both listeners: a unix socket and loopback TCP.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { Registry } from "prom-client";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type AgentView, buildApi, listenApi } from "./api.ts";

describe("agent API", () => {
  let dir: string;
  let closer: { close(): Promise<void>; tcpPort?: number } | undefined;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "berth-api-"));
  });
  afterEach(async () => {
    await closer?.close();
    closer = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves readiness, lease, peers and metrics on the socket and on TCP", async () => {
    let ready = false;
    const view: AgentView = {
      readiness: () => (ready ? { ready: true, reasons: [] } : { ready: false, reasons: ["no subnet lease held yet"] }),
      lease: () =>
        ready
          ? {
              subnet: "10.244.7.0/24",
              network: "10.244.0.0/16",
              publicIP: "192.0.2.1",
              vtepMAC: "02:00:00:00:00:01",
              vni: 1,
              key: "/berth/network/subnets/10.244.7.0-24",
              reservation: false,
            }
          : null,
      peers: () => [],
      status: () => ({ device: "berth.1" }),
    };
    const registry = new Registry();
    const socket = join(dir, "run", "agent.sock");
    closer = await listenApi(buildApi(view, registry, pino({ level: "silent" })), socket, { host: "127.0.0.1", port: 0 });
    expect(statSync(socket).isSocket()).toBe(true);
    const base = `http://127.0.0.1:${closer.tcpPort}`;

    const notReady = await fetch(`${base}/readyz`);
    expect(notReady.status).toBe(503);
    expect(await notReady.json()).toEqual({ ready: false, reasons: ["no subnet lease held yet"] });
    const noLease = await fetch(`${base}/v1/lease`);
    expect(noLease.status).toBe(404);
    expect((await noLease.json()).error).toMatch(/no subnet lease/);

    ready = true;
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    expect(await (await fetch(`${base}/v1/lease`)).json()).toMatchObject({ subnet: "10.244.7.0/24", reservation: false });
    expect(await (await fetch(`${base}/v1/peers`)).json()).toEqual([]);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.headers.get("content-type")).toContain("text/plain");
    expect((await fetch(`${base}/nope`)).status).toBe(404);
  });

  it("refuses a socket a live agent serves, and replaces a stale one", async () => {
    const view: AgentView = {
      readiness: () => ({ ready: true, reasons: [] }),
      lease: () => null,
      peers: () => [],
      status: () => ({}),
    };
    const app = () => buildApi(view, new Registry(), pino({ level: "silent" }));
    const socket = join(dir, "agent.sock");
    closer = await listenApi(app(), socket);
    const ino = statSync(socket).ino;
    await expect(listenApi(app(), socket)).rejects.toThrow(`another berth agent API is already listening on ${socket}`);
    expect(statSync(socket).ino).toBe(ino);
    expect((await fetchUnix(socket, "/healthz")).status).toBe(200);
    // A socket file whose server is gone (closed without removing it) is taken over.
    await closer.close();
    closer = undefined;
    execFileSync("python3", ["-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", socket]);
    closer = await listenApi(app(), socket);
    expect((await fetchUnix(socket, "/healthz")).status).toBe(200);
  });
});

function fetchUnix(socketPath: string, path: string): Promise<{ status: number }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, agent: false }, (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0 });
    });
    req.on("error", reject);
    req.end();
  });
}
