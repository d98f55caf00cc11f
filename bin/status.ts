// `berth status`: what berth is doing on this host, for the operator's first look. It asks
// the agent's API (health, lease, peers) and reads the state databases itself, read-only: the
// IPAM lease stores (each network's pool, the attachments) and the CSI driver's volume state.
// With the agent down it says so and shows what the databases and the agent's last runtime
// file (overlay.json) still tell. Whatever cannot be read is one line under "problems", never
// a stack trace. `--json` prints the same as one JSON document for scripts.
//
// Exit status: 0 when everything was read and is healthy, 1 when there are problems, 2 for a
// bad command line.
import { existsSync, readdirSync, statSync } from "node:fs";
import { request } from "node:http";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import Database from "better-sqlite3";
import { formatIp } from "../cni/address/address.ts";
import {
  type AddressRange,
  DEFAULT_DATA_DIR as HOST_LOCAL_DATA_DIR,
  parseHostLocalConfig,
  type RangeSet,
} from "../cni/ipam/ranges.ts";
import { DATABASE_FILE } from "../cni/ipam/store.ts";
import { readSmallFile } from "../cni/protocol/files.ts";
import { statFs } from "../native/fs.ts";
import { isMountPoint } from "../native/mount.ts";
import { BERTH_VERSION } from "../native/version.ts";
import { DEFAULT_DATA_DIR as OVERLAY_DATA_DIR } from "../overlay/cni/plugin.ts";
import { RUNTIME_FILE } from "../overlay/runtime-file.ts";

export const STATUS_USAGE = `usage: berth status [--json] [--api-socket PATH] [--run-dir DIR] [--ipam-dir DIR]...
                    [--cni-conf-dir DIR] [--csi-state-dir DIR] [--csi-data-dir DIR]

What berth is doing on this host: the agent and its store, this host's subnet and peers, each
network's address pool, the attachments, and the CSI volumes. Reads the agent's API and the
state databases (read-only); works with what it can read when the agent is down.
  --json               one JSON document instead of text
  --api-socket PATH    the agent's API socket (default /run/berth/agent.sock)
  --run-dir DIR        the agent's run directory, for its last overlay.json (default /run/berth)
  --ipam-dir DIR       a lease database directory (holding ${DATABASE_FILE}); repeatable. Default:
                       ${HOST_LOCAL_DATA_DIR}, ${OVERLAY_DATA_DIR}/ipam and those the CNI configs name
  --cni-conf-dir DIR   network configs, for the pools' sizes (default /etc/cni/net.d)
  --csi-state-dir DIR  the CSI driver's state (csi.db; default /var/lib/berth/csi)
  --csi-data-dir DIR   the CSI driver's volumes (default <csi-state-dir>/volumes)
Exit status: 0 all healthy, 1 problems found (listed), 2 bad command line.
`;

export interface StatusOptions {
  apiSocket: string;
  runDir: string;
  ipamDirs?: string[];
  cniConfDir: string;
  csiStateDir: string;
  csiDataDir?: string;
  /** How long each API request may take. */
  timeoutMs?: number;
}

export interface PoolStatus {
  /** The ranges: a subnet, or "subnet start-end" for part of one. */
  ranges: string[];
  used: number;
  size: number;
  free: number;
}

export interface NetworkStatus {
  name: string;
  ipamDir: string;
  used: number;
  /** Per range set (one per family); absent when no config for this network was found. */
  pools?: PoolStatus[];
  size?: number;
  free?: number;
}

export interface AttachmentStatus {
  network: string;
  containerId: string;
  ifname: string;
  addresses: string[];
  ipamDir: string;
}

export interface VolumeStatus {
  id: string;
  name: string;
  kind: string;
  fsType: string;
  size: number;
  used: number | null;
  status: string;
  condition: string;
  ephemeral: boolean;
  stagedAt: string | null;
  publishedAt: string[];
}

export interface StatusReport {
  version: string;
  agent: {
    socket: string;
    up: boolean;
    error?: string;
    ready?: boolean;
    reasons?: string[];
    store?: { kind: string; up: boolean };
    lease?: Record<string, unknown> | null;
    peers?: Record<string, unknown>[];
    device?: string;
    mtu?: number;
    /** From <run-dir>/overlay.json when the agent is down. */
    lastRuntime?: { subnets: string[]; networks: string[]; updatedAt?: string } | null;
  };
  ipam: { dir: string; error?: string; leases: number }[];
  networks: NetworkStatus[];
  attachments: AttachmentStatus[];
  csi: { stateDir: string; dataDir: string; error?: string; volumes: VolumeStatus[]; snapshots: number };
  problems: string[];
}

// ------------------------------------------------------------------------------- the agent

function apiGet(socketPath: string, path: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  return new Promise((done, fail) => {
    const req = request({ socketPath, path, method: "GET", timeout: timeoutMs }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        text += c;
      });
      res.on("end", () => {
        try {
          done({ status: res.statusCode ?? 0, body: JSON.parse(text) });
        } catch {
          fail(new Error(`${path} answered ${res.statusCode} with no JSON`));
        }
      });
      res.on("error", fail);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer to ${path} within ${timeoutMs} ms`)));
    req.on("error", fail);
    req.end();
  });
}

async function agentStatus(o: StatusOptions, problems: string[]): Promise<StatusReport["agent"]> {
  const timeoutMs = o.timeoutMs ?? 3000;
  const agent: StatusReport["agent"] = { socket: o.apiSocket, up: false };
  try {
    const ready = await apiGet(o.apiSocket, "/readyz", timeoutMs);
    const r = ready.body as { ready?: boolean; reasons?: string[] };
    agent.up = true;
    agent.ready = r.ready === true;
    agent.reasons = Array.isArray(r.reasons) ? r.reasons.map(String) : [];
    const [lease, peers, status] = await Promise.all([
      apiGet(o.apiSocket, "/v1/lease", timeoutMs),
      apiGet(o.apiSocket, "/v1/peers", timeoutMs),
      apiGet(o.apiSocket, "/v1/status", timeoutMs),
    ]);
    agent.lease = lease.status === 200 ? (lease.body as Record<string, unknown>) : null;
    agent.peers = Array.isArray(peers.body) ? (peers.body as Record<string, unknown>[]) : [];
    const s = status.body as { store?: { kind?: unknown; up?: unknown }; device?: unknown; mtu?: unknown };
    if (s.store) agent.store = { kind: String(s.store.kind), up: s.store.up === true };
    if (typeof s.device === "string") agent.device = s.device;
    if (typeof s.mtu === "number") agent.mtu = s.mtu;
    if (!agent.ready) problems.push(`agent not ready: ${agent.reasons.join("; ") || "no reason given"}`);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    agent.error =
      err.code === "ENOENT" || err.code === "ECONNREFUSED"
        ? `no agent listening on ${o.apiSocket} (${err.code})`
        : `agent at ${o.apiSocket}: ${err.message}`;
    problems.push(`agent down: ${agent.error}`);
    agent.lastRuntime = lastRuntime(o.runDir);
  }
  return agent;
}

/**
 * The subnets in the agent's last runtime file. A stopped agent leaves it marked not ready
 * (the plugin then refuses to use it), but its subnets are still this host's lease.
 */
function lastRuntime(runDir: string): NonNullable<StatusReport["agent"]["lastRuntime"]> | null {
  try {
    const raw = JSON.parse(readSmallFile(join(runDir, RUNTIME_FILE), 1 << 16)) as Record<string, unknown>;
    const strings = (v: unknown) => (Array.isArray(v) ? v.filter((s): s is string => typeof s === "string") : []);
    return {
      subnets: strings(raw.subnets),
      networks: strings(raw.networks),
      ...(typeof raw.updatedAt === "string" ? { updatedAt: raw.updatedAt } : {}),
    };
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------------------- networks

interface PoolConfig {
  name: string;
  ipamDir: string;
  rangeSets: RangeSet[];
}

/** The network configs in the conf dir: berth-host-local pools, and berth-overlay data dirs. */
function readNetworkConfigs(dir: string, problems: string[]): { pools: PoolConfig[]; overlayIpamDirs: Set<string> } {
  const pools: PoolConfig[] = [];
  const overlayIpamDirs = new Set<string>();
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => /\.(conf|conflist|json)$/.test(f));
  } catch {
    return { pools, overlayIpamDirs };
  }
  for (const file of files.sort()) {
    let conf: Record<string, unknown>;
    try {
      conf = JSON.parse(readSmallFile(join(dir, file), 1 << 20)) as Record<string, unknown>;
    } catch (e) {
      problems.push(`network config ${join(dir, file)}: ${(e as Error).message}`);
      continue;
    }
    if (typeof conf !== "object" || conf === null) continue;
    const name = typeof conf.name === "string" ? conf.name : "";
    const plugins = Array.isArray(conf.plugins) ? (conf.plugins as Record<string, unknown>[]) : [conf];
    for (const p of plugins) {
      if (typeof p !== "object" || p === null) continue;
      if (p.type === "berth-overlay") {
        const dataDir = typeof p.dataDir === "string" ? p.dataDir : OVERLAY_DATA_DIR;
        overlayIpamDirs.add(join(dataDir, "ipam"));
      }
      const ipam = p.ipam as Record<string, unknown> | undefined;
      if (!ipam || typeof ipam !== "object" || ipam.type !== "berth-host-local") continue;
      try {
        const c = parseHostLocalConfig(ipam);
        pools.push({ name, ipamDir: c.dataDir, rangeSets: c.rangeSets });
      } catch (e) {
        problems.push(`network config ${join(dir, file)}: ${(e as Error).message}`);
      }
    }
  }
  return { pools, overlayIpamDirs };
}

/** Assignable addresses of a range: its bounds inclusive, less the gateway when inside. */
function rangeSize(r: AddressRange): bigint {
  const all = r.end - r.start + 1n;
  return r.gateway >= r.start && r.gateway <= r.end ? all - 1n : all;
}

/** The range as its subnet, or "subnet start-end" when it leaves out more than the ends. */
function rangeText(r: AddressRange): string {
  const subnet = r.subnet.toString();
  const last = r.subnet.network + r.subnet.size - 1n;
  if (r.start - r.subnet.network <= 1n && last - r.end <= 1n) return subnet;
  const f = r.subnet.family;
  return `${subnet} ${formatIp({ family: f, value: r.start })}-${formatIp({ family: f, value: r.end })}`;
}

interface LeaseRow {
  ip: string;
  network: string;
  range_set: number;
  container_id: string;
  ifname: string;
}

function readLeases(dir: string): LeaseRow[] {
  const file = join(dir, DATABASE_FILE);
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return db
      .prepare("SELECT ip, network, range_set, container_id, ifname FROM leases ORDER BY network, container_id, ifname, address")
      .all() as LeaseRow[];
  } finally {
    db.close();
  }
}

function sqliteProblem(file: string, e: unknown): string {
  const err = e as { code?: string; message?: string };
  const what =
    err.code === "SQLITE_NOTADB" || err.code === "SQLITE_CORRUPT"
      ? "damaged or not a database"
      : err.code === "SQLITE_CANTOPEN"
        ? "cannot be opened"
        : "cannot be read";
  return `${file}: ${what} (${err.message ?? String(e)})`;
}

function networksStatus(
  o: StatusOptions,
  agent: StatusReport["agent"],
  problems: string[],
): Pick<StatusReport, "ipam" | "networks" | "attachments"> {
  const { pools, overlayIpamDirs } = readNetworkConfigs(o.cniConfDir, problems);
  const dirs = o.ipamDirs ?? [
    ...new Set([HOST_LOCAL_DATA_DIR, join(OVERLAY_DATA_DIR, "ipam"), ...pools.map((p) => p.ipamDir), ...overlayIpamDirs]),
  ];
  // The overlay's pool is this host's subnet(s): the agent's lease, or its last runtime file.
  const overlaySubnets = agent.lease
    ? [agent.lease.subnet, agent.lease.subnetV6].filter((s): s is string => typeof s === "string")
    : (agent.lastRuntime?.subnets ?? []);
  let overlaySets: RangeSet[] = [];
  if (overlaySubnets.length > 0) {
    try {
      overlaySets = parseHostLocalConfig({ ranges: overlaySubnets.map((subnet) => [{ subnet }]) }).rangeSets;
    } catch {
      overlaySets = [];
    }
  }
  const ipam: StatusReport["ipam"] = [];
  const networks: NetworkStatus[] = [];
  const attachments: AttachmentStatus[] = [];
  for (const dir of dirs.map((d) => resolve(d))) {
    const file = join(dir, DATABASE_FILE);
    // Without explicit dirs, a default nobody used is not a problem.
    if (!o.ipamDirs && !existsSync(file)) continue;
    let rows: LeaseRow[];
    try {
      rows = readLeases(dir);
    } catch (e) {
      const line =
        (e as { code?: string }).code === undefined && !existsSync(file) ? `${file}: no lease database` : sqliteProblem(file, e);
      ipam.push({ dir, error: line, leases: 0 });
      problems.push(`lease database ${line}`);
      continue;
    }
    ipam.push({ dir, leases: rows.length });
    // A berth-overlay data dir holds its attachment records beside ipam/.
    const isOverlay = overlayIpamDirs.has(dir) || existsSync(join(dir, "..", "attachments"));
    const byNetwork = new Map<string, LeaseRow[]>();
    for (const r of rows) byNetwork.set(r.network, [...(byNetwork.get(r.network) ?? []), r]);
    for (const [name, leases] of byNetwork) {
      const net: NetworkStatus = { name, ipamDir: dir, used: leases.length };
      const sets = isOverlay ? overlaySets : pools.find((p) => p.name === name && resolve(p.ipamDir) === dir)?.rangeSets;
      if (sets && sets.length > 0) {
        net.pools = sets.map((set, i) => {
          const size = Number(set.ranges.reduce((n, r) => n + rangeSize(r), 0n));
          const used = leases.filter((l) => l.range_set === i).length;
          return { ranges: set.ranges.map(rangeText), used, size, free: Math.max(0, size - used) };
        });
        net.size = net.pools.reduce((n, p) => n + p.size, 0);
        net.free = net.pools.reduce((n, p) => n + p.free, 0);
        for (const p of net.pools) if (p.free === 0) problems.push(`network ${name}: pool ${p.ranges.join(", ")} is full`);
      }
      networks.push(net);
      const owners = new Map<string, AttachmentStatus>();
      for (const l of leases) {
        const key = `${l.container_id}\0${l.ifname}`;
        const a = owners.get(key) ?? {
          network: name,
          containerId: l.container_id,
          ifname: l.ifname,
          addresses: [],
          ipamDir: dir,
        };
        a.addresses.push(l.ip);
        owners.set(key, a);
      }
      attachments.push(...owners.values());
    }
  }
  return { ipam, networks, attachments };
}

// ------------------------------------------------------------------------------- volumes

interface VolumeRowRaw {
  id: string;
  name: string;
  kind: string;
  capacity: number;
  fs_type: string;
  ephemeral: number;
  status: string;
  condition: string;
}

function csiStatus(o: StatusOptions, problems: string[]): StatusReport["csi"] {
  const stateDir = resolve(o.csiStateDir);
  const dataDir = resolve(o.csiDataDir ?? join(stateDir, "volumes"));
  const csi: StatusReport["csi"] = { stateDir, dataDir, volumes: [], snapshots: 0 };
  const file = join(stateDir, "csi.db");
  if (!existsSync(file)) return csi; // no CSI driver has run here
  let rows: VolumeRowRaw[];
  let stagings: { volume_id: string; staging_path: string }[];
  let publications: { volume_id: string; target_path: string }[];
  try {
    const db = new Database(file, { readonly: true, fileMustExist: true });
    try {
      rows = db
        .prepare("SELECT id, name, kind, capacity, fs_type, ephemeral, status, condition FROM volumes ORDER BY name")
        .all() as VolumeRowRaw[];
      stagings = db.prepare("SELECT volume_id, staging_path FROM stagings").all() as typeof stagings;
      publications = db
        .prepare("SELECT volume_id, target_path FROM publications ORDER BY target_path")
        .all() as typeof publications;
      csi.snapshots = (db.prepare("SELECT count(*) AS n FROM snapshots").get() as { n: number }).n;
    } finally {
      db.close();
    }
  } catch (e) {
    csi.error = sqliteProblem(file, e);
    problems.push(`CSI state ${csi.error}`);
    return csi;
  }
  for (const v of rows) {
    const stagedAt = stagings.find((s) => s.volume_id === v.id)?.staging_path ?? null;
    const publishedAt = publications.filter((p) => p.volume_id === v.id).map((p) => p.target_path);
    const image = join(dataDir, "images", `${v.id}.img`);
    const dirMount = join(dataDir, "mounts", v.id);
    let condition = v.condition;
    if (!condition && v.status === "ready" && !existsSync(image)) condition = `backing file ${image} is missing`;
    if (!condition) {
      const unmounted = publishedAt.find((p) => !isMountPoint(p));
      if (unmounted) condition = `publication at ${unmounted} is not mounted`;
    }
    // Used bytes: the volume's own filesystem when it is mounted, else the image's allocated blocks.
    let used: number | null = null;
    try {
      const mounted = v.kind === "dir" ? dirMount : v.fs_type ? (stagedAt ?? publishedAt[0]) : undefined;
      used = mounted && isMountPoint(mounted) ? statFs(mounted).bytes.used : statSync(image).blocks * 512;
    } catch {
      used = null;
    }
    csi.volumes.push({
      id: v.id,
      name: v.name,
      kind: v.kind,
      fsType: v.fs_type,
      size: v.capacity,
      used,
      status: v.status,
      condition,
      ephemeral: v.ephemeral === 1,
      stagedAt,
      publishedAt,
    });
    if (condition) problems.push(`volume ${v.name} (${v.id}): ${condition}`);
    else if (v.status !== "ready") problems.push(`volume ${v.name} (${v.id}) is ${v.status} (an interrupted operation)`);
  }
  return csi;
}

// ------------------------------------------------------------------------------- report

export async function collectStatus(o: StatusOptions): Promise<StatusReport> {
  const problems: string[] = [];
  const agent = await agentStatus(o, problems);
  const nets = networksStatus(o, agent, problems);
  const csi = csiStatus(o, problems);
  return { version: BERTH_VERSION, agent, ...nets, csi, problems };
}

function bytes(n: number | null): string {
  if (n === null) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

/** The report as text for a person: one section per part, problems last. */
export function formatStatus(r: StatusReport): string {
  const out: string[] = [`berth ${r.version}`, ""];
  const a = r.agent;
  if (a.up) {
    out.push(`agent    ${a.ready ? "ready" : `NOT READY: ${a.reasons?.join("; ")}`} (${a.socket})`);
    if (a.store) out.push(`store    ${a.store.kind}, ${a.store.up ? "reachable" : "UNREACHABLE"}`);
    const l = a.lease;
    if (l) {
      const subnets = [l.subnet, l.subnetV6].filter(Boolean).join(", ");
      const networks = [l.network, l.networkV6].filter(Boolean).join(", ");
      out.push(
        `subnet   ${subnets} of ${networks}, public IP ${l.publicIP}, VNI ${l.vni}${a.device ? `, device ${a.device}` : ""}${a.mtu ? ` MTU ${a.mtu}` : ""}`,
      );
    } else out.push("subnet   none leased yet");
    out.push(`peers    ${a.peers?.length ?? 0}`);
    for (const p of a.peers ?? []) {
      const subnets = [p.subnet, p.subnetV6].filter(Boolean).join(", ");
      out.push(`  ${subnets}  via ${p.publicIP}  ${p.hostname}`);
    }
  } else {
    out.push(`agent    DOWN: ${a.error}`);
    if (a.lastRuntime)
      out.push(
        `subnet   ${a.lastRuntime.subnets.join(", ") || "none"} (last written by the agent${a.lastRuntime.updatedAt ? ` at ${a.lastRuntime.updatedAt}` : ""})`,
      );
  }
  out.push("", "networks");
  for (const i of r.ipam) if (i.error) out.push(`  unreadable: ${i.error}`);
  if (r.networks.length === 0) out.push("  (no leases)");
  for (const n of r.networks) {
    const pools = n.pools
      ? n.pools.map((p) => `${p.ranges.join(", ")}: ${p.used} used, ${p.free} free of ${p.size}`).join("; ")
      : `${n.used} used (pool size unknown: no config for it)`;
    out.push(`  ${n.name}  ${pools}  [${n.ipamDir}]`);
  }
  out.push("", "attachments");
  if (r.attachments.length === 0) out.push("  (none)");
  for (const at of r.attachments) out.push(`  ${at.containerId}  ${at.ifname}  ${at.network}  ${at.addresses.join(", ")}`);
  out.push("", `volumes  [${r.csi.stateDir}]`);
  if (r.csi.error) out.push(`  unreadable: ${r.csi.error}`);
  else if (r.csi.volumes.length === 0) out.push("  (none)");
  for (const v of r.csi.volumes) {
    const where = [
      ...(v.stagedAt ? [`staged at ${v.stagedAt}`] : []),
      ...(v.publishedAt.length ? [`published at ${v.publishedAt.join(", ")}`] : []),
    ];
    out.push(
      `  ${v.name}  ${v.kind}${v.fsType ? ` ${v.fsType}` : ""}  ${bytes(v.size)}, ${bytes(v.used)} used  ${v.status === "ready" ? "" : `${v.status}  `}${v.condition ? `ABNORMAL: ${v.condition}` : "healthy"}${where.length ? `  ${where.join("; ")}` : ""}`,
    );
  }
  if (r.problems.length > 0) {
    out.push("", "problems");
    for (const p of r.problems) out.push(`  - ${p}`);
  }
  return `${out.join("\n")}\n`;
}

export async function runStatus(argv: string[]): Promise<number> {
  let values: ReturnType<typeof parse>["values"];
  function parse(args: string[]) {
    return parseArgs({
      args,
      options: {
        json: { type: "boolean" },
        "api-socket": { type: "string" },
        "run-dir": { type: "string" },
        "ipam-dir": { type: "string", multiple: true },
        "cni-conf-dir": { type: "string" },
        "csi-state-dir": { type: "string" },
        "csi-data-dir": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    });
  }
  try {
    ({ values } = parse(argv));
  } catch (e) {
    process.stderr.write(`berth status: ${(e as Error).message}\n${STATUS_USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(STATUS_USAGE);
    return 0;
  }
  const runDir = values["run-dir"] ?? "/run/berth";
  const report = await collectStatus({
    apiSocket: values["api-socket"] ?? join(runDir, "agent.sock"),
    runDir,
    ipamDirs: values["ipam-dir"],
    cniConfDir: values["cni-conf-dir"] ?? "/etc/cni/net.d",
    csiStateDir: values["csi-state-dir"] ?? "/var/lib/berth/csi",
    csiDataDir: values["csi-data-dir"],
  });
  process.stdout.write(values.json ? `${JSON.stringify(report, null, 2)}\n` : formatStatus(report));
  return report.problems.length > 0 ? 1 : 0;
}
