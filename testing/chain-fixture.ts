// Test fixture for the meta plugins: a berth-bridge network (host-local IPAM in a temp dir,
// unique bridge, nft table and subnet per test) and the CNI protocol driven in-process, the
// way a runtime chains plugins: bridge ADD first, its result as the meta plugin's prevResult.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { closeLeaseStores } from "../cni/ipam/host-local/host-local.ts";
import { bridgePlugin } from "../cni/plugins/bridge/bridge.ts";
import { handleInvocation } from "../cni/protocol/invocation.ts";
import type { Plugin, Result } from "../cni/protocol/types.ts";
import { addNetns, delLink, delNetns, ipJson, sh, testPrefix } from "./kernel.ts";

export interface Invocation {
  exitCode: number;
  // biome-ignore lint/suspicious/noExplicitAny: parsed JSON under test
  json: any;
}

export class ChainFixture {
  readonly prefix = testPrefix();
  readonly bridge = `${this.prefix}br`;
  readonly table: string;
  readonly network: string;
  /** 10.x.y.0/24, x.y random per test so parallel test files do not overlap. */
  readonly subnet: string;
  readonly gateway: string;
  readonly dataDir = mkdtempSync(join(tmpdir(), `${this.prefix}-meta-`));
  private readonly namespaces: string[] = [];

  /** `table`: share another fixture's nftables table (two networks in one table). */
  constructor(
    readonly name: string,
    table?: string,
  ) {
    this.table = table ?? this.prefix;
    this.network = `${this.prefix}-${name}`;
    const x = 100 + Math.floor(Math.random() * 100);
    const y = Math.floor(Math.random() * 256);
    this.subnet = `10.${x}.${y}.0/24`;
    this.gateway = `10.${x}.${y}.1`;
  }

  /** A fresh netns (named with the test prefix); removed by cleanup(). */
  netns(suffix: string): string {
    const n = `${this.prefix}${suffix}`;
    addNetns(n);
    this.namespaces.push(n);
    return n;
  }

  bridgeConf(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      cniVersion: "1.1.0",
      name: this.network,
      type: "berth-bridge",
      bridge: this.bridge,
      isGateway: true,
      nftTable: this.table,
      ipam: { type: "berth-host-local", dataDir: this.dataDir, ranges: [[{ subnet: this.subnet }]] },
      ...extra,
    };
  }

  env(command: string, containerId: string, netns: string | undefined, ifname = "eth0"): Record<string, string> {
    const e: Record<string, string> = {
      CNI_COMMAND: command,
      CNI_CONTAINERID: containerId,
      CNI_IFNAME: ifname,
      CNI_PATH: "/opt/cni/bin",
    };
    if (netns !== undefined) e.CNI_NETNS = `/var/run/netns/${netns}`;
    return e;
  }

  async invoke(plugin: Plugin, env: Record<string, string>, config: Record<string, unknown>): Promise<Invocation> {
    const out = await handleInvocation(plugin, env, Buffer.from(JSON.stringify(config)));
    return { exitCode: out.exitCode, json: out.stdout ? JSON.parse(out.stdout) : undefined };
  }

  /** bridge ADD; throws with the CNI error when it fails. */
  async bridgeAdd(containerId: string, netns: string, ifname = "eth0", extra: Record<string, unknown> = {}): Promise<Result> {
    const r = await this.invoke(bridgePlugin, this.env("ADD", containerId, netns, ifname), this.bridgeConf(extra));
    if (r.exitCode !== 0) throw new Error(`bridge ADD failed: ${JSON.stringify(r.json)}`);
    return r.json as Result;
  }

  async bridgeDel(containerId: string, netns: string | undefined, prevResult?: Result, ifname = "eth0"): Promise<void> {
    const r = await this.invoke(bridgePlugin, this.env("DEL", containerId, netns, ifname), { ...this.bridgeConf(), prevResult });
    if (r.exitCode !== 0) throw new Error(`bridge DEL failed: ${JSON.stringify(r.json)}`);
  }

  /** The meta plugin's config as a runtime would send it: name/cniVersion injected, prevResult, runtimeConfig. */
  metaConf(type: string, extra: Record<string, unknown>, prevResult?: Result): Record<string, unknown> {
    const c: Record<string, unknown> = { cniVersion: "1.1.0", name: this.network, type, nftTable: this.table, ...extra };
    if (prevResult) c.prevResult = prevResult;
    return c;
  }

  // biome-ignore lint/suspicious/noExplicitAny: nft JSON
  nftTable(): any[] {
    try {
      return JSON.parse(sh("nft", ["-j", "list", "table", "inet", this.table])).nftables;
    } catch {
      return [];
    }
  }

  cleanup(): void {
    for (const n of this.namespaces) delNetns(n);
    // The bridge and anything else named with this test's prefix (IFBs of berth-bandwidth).
    for (const l of ipJson<{ ifname: string }>(["link", "show"])) if (l.ifname.startsWith(this.prefix)) delLink(l.ifname);
    for (const fam of ["inet", "bridge"]) {
      try {
        sh("nft", ["delete", "table", fam, this.table]);
      } catch {
        // not created
      }
    }
    closeLeaseStores();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
