// The world of one robustness suite: a Sandbox (netns, bridge name, temp dataDir, private
// subnet), a berth-bridge network with berth-host-local IPAM and ipMasq in an nftables table
// of the test, the built executables run cold (or, with `socket` set, through the fast-path
// server listening there), and read-back of
// everything that could leak: bridge ports, host veths, leases (SQLite, read-only), masquerade
// elements, and what is left in each container netns.
import { existsSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import Database from "better-sqlite3";
import { delLink, ipJson, sh } from "../../testing/kernel.ts";
import { type CniOutcome, execPlugin } from "../../testing/plugin-exec.ts";
import { Sandbox } from "../../testing/sandbox.ts";

export const CNI_DIR = resolve(import.meta.dirname, "../../build/cni");
/** The executables exist and their Node bundles too (the launcher execs them on the cold path). */
export const BUILT = ["berth-bridge", "berth-host-local"].every(
  (p) => existsSync(join(CNI_DIR, p)) && existsSync(resolve(CNI_DIR, "../cni-node", `${p}.cjs`)),
);

export interface Attachment {
  containerId: string;
  netns?: string;
  ifname?: string;
}

export interface LeaseRow {
  ip: string;
  container_id: string;
  ifname: string;
}

export class World {
  readonly sandbox = new Sandbox();
  readonly prefix = this.sandbox.prefix;
  readonly network: string;
  readonly subnet: string;
  readonly base: string;
  readonly table = this.prefix;
  /** BERTH_CNI_SOCKET for every run: "off" is the cold path, a socket path the fast path. */
  socket = "off";
  /** Names of the netns that runs on this world's network were given (CNI_NETNS). */
  private readonly networkNetns = new Set<string>();

  constructor(label: string) {
    this.network = `${this.prefix}-${label}`;
    const s = this.sandbox.allocateSubnet(24);
    this.subnet = s.subnet;
    this.base = s.base;
  }

  get dataDir(): string {
    return this.sandbox.dataDir;
  }

  /** The network config; `rangeSize` addresses from .2 on, so a leaked lease shows up as exhaustion. */
  config(rangeSize = 200, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      cniVersion: "1.1.0",
      name: this.network,
      type: "berth-bridge",
      bridge: this.sandbox.bridgeName,
      isGateway: true,
      ipMasq: true,
      nftTable: this.table,
      ...extra,
      ipam: {
        type: "berth-host-local",
        dataDir: this.dataDir,
        ranges: [[{ subnet: this.subnet, rangeStart: `${this.base}.2`, rangeEnd: `${this.base}.${1 + rangeSize}` }]],
      },
    };
  }

  /** Runs `build/cni/<type>` with the CNI_* variables of `a` (CNI_PATH = build/cni), on this world's path. */
  run(
    command: string,
    a: Attachment,
    stdin: string | object,
    env: Record<string, string | undefined> = {},
    type = "berth-bridge",
  ): Promise<CniOutcome> {
    const conf = typeof stdin === "string" ? parseOrNull(stdin) : (stdin as { name?: unknown });
    if (a.netns && conf?.name === this.network) this.networkNetns.add(basename(a.netns));
    return execPlugin({
      cniPath: CNI_DIR,
      type,
      env: {
        CNI_COMMAND: command,
        CNI_CONTAINERID: a.containerId,
        CNI_NETNS: a.netns,
        CNI_IFNAME: a.ifname ?? "eth0",
        BERTH_CNI_SOCKET: this.socket,
        ...env,
      },
      stdin,
      timeoutMs: 90_000,
    });
  }

  /** Ports enslaved to this world's bridge. */
  bridgePorts(): string[] {
    try {
      return ipJson<{ ifname: string }>(["link", "show", "master", this.sandbox.bridgeName]).map((l) => l.ifname);
    } catch {
      return []; // no bridge
    }
  }

  /**
   * Host veths of this network: those whose peer is in a netns this network's attachments were
   * made in, found from the kernel's view of the pair, whatever name the plugin gave the host end.
   */
  hostVeths(): string[] {
    const ids = new Set(
      ipJson<{ name: string; id?: number }>(["netns", "list"])
        .filter((n) => n.id !== undefined && this.networkNetns.has(n.name))
        .map((n) => n.id),
    );
    if (ids.size === 0) return [];
    return ipJson<{ ifname: string; link_netnsid?: number }>(["link", "show", "type", "veth"])
      .filter((l) => l.link_netnsid !== undefined && ids.has(l.link_netnsid))
      .map((l) => l.ifname);
  }

  /** Leases of this network, read straight from the SQLite file (read-only). */
  leases(): LeaseRow[] {
    const file = join(this.dataDir, "ipam.db");
    if (!existsSync(file)) return [];
    const db = new Database(file, { readonly: true, fileMustExist: true });
    try {
      return db
        .prepare("SELECT ip, container_id, ifname FROM leases WHERE network = ? ORDER BY ip")
        .all(this.network) as LeaseRow[];
    } finally {
      db.close();
    }
  }

  /** `PRAGMA integrity_check` of the lease database: ["ok"] when sound. */
  integrity(): string[] {
    const file = join(this.dataDir, "ipam.db");
    if (!existsSync(file)) return ["ok"];
    const db = new Database(file, { readonly: true, fileMustExist: true });
    try {
      return (db.pragma("integrity_check") as { integrity_check: string }[]).map((r) => r.integrity_check);
    } finally {
      db.close();
    }
  }

  /** Addresses with a masquerade element in the table, from nft's own listing. */
  masqueradedAddresses(): string[] {
    let text: string;
    try {
      text = sh("nft", ["list", "table", "inet", this.table]);
    } catch {
      return []; // no table
    }
    return [...text.matchAll(/([0-9a-f.:]+) comment "/g)].map((m) => m[1]!);
  }

  /** Links other than lo inside a container netns. */
  linksIn(netns: string): string[] {
    return ipJson<{ ifname: string }>(["link", "show"], netns)
      .map((l) => l.ifname)
      .filter((n) => n !== "lo");
  }

  async cleanup(): Promise<void> {
    this.sandbox.cleanup();
    for (const l of this.hostVeths()) delLink(l);
    for (const family of ["inet", "bridge"]) {
      try {
        sh("nft", ["delete", "table", family, this.table]);
      } catch {
        // not there
      }
    }
  }
}

/** The single IPv4 address (no prefix) in a CNI 1.x result. */
export function addressOf(result: unknown): string {
  const ips = (result as { ips?: { address: string }[] } | undefined)?.ips ?? [];
  if (ips.length !== 1) throw new Error(`expected one address in ${JSON.stringify(result)}`);
  return ips[0]!.address.split("/")[0]!;
}

function parseOrNull(text: string): { name?: unknown } | null {
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === "object" && v !== null ? (v as { name?: unknown }) : null;
  } catch {
    return null;
  }
}
