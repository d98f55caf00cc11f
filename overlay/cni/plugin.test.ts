// berth-overlay's berth-bridge config: routes to the cluster networks always, a default route via
// the bridge only with isDefaultGateway (what Kubernetes pods need to reach their node's
// addresses: hostPort replies, the API server; the installed overlay config sets it).
import { describe, expect, it } from "vitest";
import type { Request } from "../../cni/protocol/types.ts";
import type { OverlayRuntime } from "../runtime-file.ts";
import { bridgeConfigFor } from "./plugin.ts";

const runtime: OverlayRuntime = {
  ready: true,
  network: "10.207.0.0/16",
  subnet: "10.207.3.0/24",
  gateway: "10.207.3.1",
  networks: ["10.207.0.0/16"],
  subnets: ["10.207.3.0/24"],
  gateways: ["10.207.3.1"],
  mtu: 1400,
  vni: 1,
  device: "berth.1",
} as OverlayRuntime;

const request = (extra: Record<string, unknown>): Request =>
  ({
    command: "ADD",
    containerId: "c1",
    netns: "/var/run/netns/x",
    ifname: "eth0",
    args: {},
    path: [],
    config: { cniVersion: "1.0.0", name: "berth", type: "berth-overlay", ...extra },
    stdin: Buffer.alloc(0),
  }) as unknown as Request;

describe("berth-overlay's bridge config", () => {
  it("without isDefaultGateway: routes to the cluster networks only", () => {
    const conf = bridgeConfigFor(request({}), runtime) as Record<string, unknown>;
    expect(conf.isDefaultGateway).toBeUndefined();
    expect(conf.isGateway).toBe(true);
    expect((conf.ipam as { routes: unknown[] }).routes).toEqual([{ dst: "10.207.0.0/16" }]);
  });

  it("isDefaultGateway: true is passed to berth-bridge (a default route via the bridge's gateway)", () => {
    const conf = bridgeConfigFor(request({ isDefaultGateway: true }), runtime) as Record<string, unknown>;
    expect(conf.isDefaultGateway).toBe(true);
    expect((conf.ipam as { routes: unknown[] }).routes).toEqual([{ dst: "10.207.0.0/16" }]);
  });

  it("the installed overlay config asks for it", async () => {
    const { readFileSync } = await import("node:fs");
    const { join } = await import("node:path");
    const example = JSON.parse(
      readFileSync(join(import.meta.dirname, "..", "..", "deploy", "examples", "10-berth-overlay.conflist"), "utf8"),
    );
    expect(example.plugins[0]).toEqual({ type: "berth-overlay", isDefaultGateway: true });
  });

  it("a non-boolean isDefaultGateway is a config error", () => {
    expect(() => bridgeConfigFor(request({ isDefaultGateway: "yes" }), runtime)).toThrow(/isDefaultGateway/);
  });
});
