// `berth agent` configuration: command-line flags and an optional JSON file (--config) with
// the same keys (flag names, or their camelCase form). Flags win over the file. Every bad
// value becomes an AgentConfigError that names the flag; nobody sees a stack trace.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ipFamily, Subnet } from "../cni/address/address.ts";
import { LOG_LEVELS, type LogFormat, LogFormatError, resolveLogFormat } from "../native/log.ts";

export interface AgentConfig {
  store: "local" | "etcd" | "kube";
  etcdEndpoints: string[];
  /** kube store: this node's name (default: the host name) and how to reach the API server. */
  nodeName?: string;
  kubeconfig?: string;
  etcdPrefix: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  /** SQLite file of the local store (default <state-dir>/store.db); agents sharing it share a cluster. */
  localStore?: string;
  clusterCidrs: string[];
  subnetLen?: number;
  subnetLenV6?: number;
  vni: number;
  vxlanPort: number;
  underlayIface?: string;
  publicIP?: string;
  mtu?: number;
  stateDir: string;
  runDir: string;
  apiSocket: string;
  /** The CNI fast-path socket the plugin launchers connect to; "" turns the fast path off. */
  cniSocket: string;
  /** HOST:PORT for a TCP listener besides the unix socket. */
  apiListen?: { host: string; port: number };
  leaseTtlSeconds: number;
  /** How long peers missing from a wiped or replaced store stay programmed while they re-register. */
  storeResetGraceSeconds: number;
  reconcileIntervalMs: number;
  logLevel: string;
  /** json or text; absent: text on a terminal, JSON otherwise (native/log.ts). */
  logFormat?: LogFormat;
}

export class AgentConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AgentConfigError";
  }
}

type Kind = "string" | "number" | "list" | "boolean";

/** Flag name → [config key, kind]. */
const FLAGS: Record<string, [keyof RawConfig, Kind]> = {
  store: ["store", "string"],
  "etcd-endpoints": ["etcdEndpoints", "list"],
  "etcd-prefix": ["etcdPrefix", "string"],
  "etcd-ca": ["etcdCa", "string"],
  "etcd-cert": ["etcdCert", "string"],
  "etcd-key": ["etcdKey", "string"],
  "local-store": ["localStore", "string"],
  "node-name": ["nodeName", "string"],
  kubeconfig: ["kubeconfig", "string"],
  "cluster-cidr": ["clusterCidrs", "list"],
  "subnet-len": ["subnetLen", "number"],
  "subnet-len-v6": ["subnetLenV6", "number"],
  vni: ["vni", "number"],
  "vxlan-port": ["vxlanPort", "number"],
  "underlay-iface": ["underlayIface", "string"],
  "public-ip": ["publicIP", "string"],
  mtu: ["mtu", "number"],
  "state-dir": ["stateDir", "string"],
  "run-dir": ["runDir", "string"],
  "api-socket": ["apiSocket", "string"],
  "cni-socket": ["cniSocket", "string"],
  "api-listen": ["apiListen", "string"],
  "lease-ttl": ["leaseTtlSeconds", "number"],
  "store-reset-grace": ["storeResetGraceSeconds", "number"],
  "reconcile-interval": ["reconcileIntervalMs", "number"],
  "log-level": ["logLevel", "string"],
  "log-format": ["logFormat", "string"],
};

type RawConfig = { [K in keyof AgentConfig]?: unknown } & { config?: unknown };

export const AGENT_USAGE = `usage: berth agent [flags]

  --config FILE             JSON file with the same keys as the flags
  --store local|etcd|kube   cluster store (default local: SQLite under the state dir; kube:
                            the Kubernetes API, each Node's spec.podCIDR, like flannel's kube mode)
  --etcd-endpoints URLS     comma-separated, e.g. http://10.0.0.1:2379
  --etcd-prefix PREFIX      key prefix (default /berth/network)
  --etcd-ca/--etcd-cert/--etcd-key FILE   TLS for etcd
  --local-store FILE        SQLite file of the local store (default <state-dir>/store.db);
                            agents on one host sharing the file form one cluster
  --node-name NAME          kube store: this node's Node object (default: the host name)
  --kubeconfig FILE         kube store: API server and credentials (default: in-cluster service
                            account)
  --cluster-cidr CIDR       pod network; repeat for dual-stack (one IPv4, optional one IPv6)
  --subnet-len N            host subnet length (default /24; /64 for IPv6 via --subnet-len-v6)
  --vni N                   VXLAN id (default 1)
  --vxlan-port N            VXLAN UDP port (default 4789)
  --underlay-iface IFACE    interface carrying VXLAN traffic (default: the default route's)
  --public-ip IP            underlay address to publish (default: the interface's first)
  --mtu N                   overlay MTU (default underlay MTU - 50, or - 70 for IPv6)
  --state-dir DIR           (default /var/lib/berth/agent)
  --run-dir DIR             (default /run/berth)
  --api-socket PATH         (default <run-dir>/agent.sock)
  --cni-socket PATH         CNI fast path for the plugin launchers (default <run-dir>/cni.sock; "" = off)
  --api-listen HOST:PORT    also serve the API on TCP
  --lease-ttl SECONDS       subnet lease TTL (default 86400)
  --store-reset-grace SECONDS  when the store comes back wiped, keep the peers it lost this long
                            while they re-register (default 60)
  --reconcile-interval MS   periodic reconcile (default 5000)
  --log-level LEVEL         pino level (default info)
  --log-format json|text    log lines as JSON or as text (default: text on a terminal, else JSON)
`;

function camel(flag: string): keyof RawConfig | undefined {
  return FLAGS[flag]?.[0] ?? (Object.values(FLAGS).some(([k]) => k === flag) ? (flag as keyof RawConfig) : undefined);
}

/** Parses argv (flags only) into a raw key/value map; `--x=v` and `--x v` both work. */
function parseFlags(argv: string[]): RawConfig {
  const raw: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("--")) throw new AgentConfigError(`unexpected argument "${arg}"`);
    const eq = arg.indexOf("=");
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    if (name === "config") {
      raw.config = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
      if (raw.config === undefined) throw new AgentConfigError("--config needs a value");
      continue;
    }
    const spec = FLAGS[name];
    if (!spec) throw new AgentConfigError(`unknown flag --${name}`);
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new AgentConfigError(`--${name} needs a value`);
    const [key, kind] = spec;
    if (kind === "list") {
      raw[key] = [...((raw[key] as string[] | undefined) ?? []), ...value.split(",").filter(Boolean)];
    } else {
      raw[key] = value;
    }
  }
  return raw as RawConfig;
}

function readConfigFile(path: string): RawConfig {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new AgentConfigError(`--config ${path}: ${(e as Error).message}`);
  }
  if (!data || typeof data !== "object" || Array.isArray(data))
    throw new AgentConfigError(`--config ${path}: expected a JSON object`);
  const raw: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(data)) {
    const key = camel(k);
    if (!key) throw new AgentConfigError(`--config ${path}: unknown key "${k}"`);
    raw[key] = v;
  }
  return raw as RawConfig;
}

function flagOf(key: string): string {
  return Object.entries(FLAGS).find(([, [k]]) => k === key)?.[0] ?? key;
}

function str(raw: RawConfig, key: keyof RawConfig): string | undefined {
  const v = raw[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string" || v === "") throw new AgentConfigError(`--${flagOf(key)}: expected a non-empty string`);
  return v;
}

function int(raw: RawConfig, key: keyof RawConfig, min: number, max: number): number | undefined {
  const v = raw[key];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === "number" ? v : typeof v === "string" && /^\d+$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new AgentConfigError(`--${flagOf(key)}: expected a whole number ${min}..${max}, got ${JSON.stringify(v)}`);
  }
  return n;
}

function list(raw: RawConfig, key: keyof RawConfig): string[] | undefined {
  const v = raw[key];
  if (v === undefined || v === null) return undefined;
  const items = typeof v === "string" ? v.split(",") : v;
  if (!Array.isArray(items) || items.some((x) => typeof x !== "string")) {
    throw new AgentConfigError(`--${flagOf(key)}: expected a list of strings`);
  }
  return items.filter(Boolean);
}

/** Parses flags (and the --config file) into a complete, validated config. */
export function parseAgentConfig(argv: string[], defaults: Partial<RawConfig> = {}): AgentConfig {
  const flags = parseFlags(argv);
  const file = typeof flags.config === "string" ? readConfigFile(flags.config) : {};
  const raw: RawConfig = { ...defaults, ...file, ...flags };

  const store = str(raw, "store") ?? "local";
  if (store !== "local" && store !== "etcd" && store !== "kube")
    throw new AgentConfigError(`--store: expected "local", "etcd" or "kube", got "${store}"`);
  const etcdEndpoints = list(raw, "etcdEndpoints") ?? [];
  if (store === "etcd" && etcdEndpoints.length === 0) throw new AgentConfigError("--store etcd needs --etcd-endpoints");
  for (const e of etcdEndpoints) {
    if (!/^https?:\/\/[^/]+$/.test(e)) throw new AgentConfigError(`--etcd-endpoints: "${e}" is not http(s)://host:port`);
  }
  const etcdPrefix = (str(raw, "etcdPrefix") ?? "/berth/network").replace(/\/+$/, "");
  if (!etcdPrefix.startsWith("/")) throw new AgentConfigError(`--etcd-prefix: must start with "/"`);

  const clusterCidrs = list(raw, "clusterCidrs") ?? [];
  if (clusterCidrs.length === 0) throw new AgentConfigError("--cluster-cidr is required (e.g. --cluster-cidr 10.244.0.0/16)");
  for (const c of clusterCidrs) {
    try {
      Subnet.parse(c);
    } catch (e) {
      throw new AgentConfigError(`--cluster-cidr: ${(e as Error).message}`);
    }
  }

  const publicIP = str(raw, "publicIP");
  if (publicIP !== undefined && !ipFamily(publicIP))
    throw new AgentConfigError(`--public-ip: "${publicIP}" is not an IP address`);
  const underlayIface = str(raw, "underlayIface");
  if (underlayIface !== undefined && !/^[^\s/]{1,15}$/.test(underlayIface)) {
    throw new AgentConfigError(`--underlay-iface: "${underlayIface}" is not an interface name`);
  }

  const runDir = str(raw, "runDir") ?? "/run/berth";
  let apiListen: AgentConfig["apiListen"];
  const listen = str(raw, "apiListen");
  if (listen !== undefined) {
    const m = listen.match(/^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/);
    const port = m ? Number(m[3]) : Number.NaN;
    if (!m || port < 1 || port > 65535) throw new AgentConfigError(`--api-listen: expected HOST:PORT, got "${listen}"`);
    // Without a host, loopback: exposing the API beyond the host must be asked for explicitly.
    apiListen = { host: m[1] ?? (m[2] || "127.0.0.1"), port };
  }

  const config: AgentConfig = {
    store,
    etcdEndpoints,
    etcdPrefix,
    clusterCidrs,
    vni: int(raw, "vni", 1, 16_777_215) ?? 1,
    vxlanPort: int(raw, "vxlanPort", 1, 65535) ?? 4789,
    stateDir: str(raw, "stateDir") ?? "/var/lib/berth/agent",
    runDir,
    apiSocket: str(raw, "apiSocket") ?? join(runDir, "agent.sock"),
    cniSocket: str(raw, "cniSocket") ?? join(runDir, "cni.sock"),
    leaseTtlSeconds: int(raw, "leaseTtlSeconds", 5, 30 * 86400) ?? 86400,
    storeResetGraceSeconds: int(raw, "storeResetGraceSeconds", 0, 86400) ?? 60,
    reconcileIntervalMs: int(raw, "reconcileIntervalMs", 100, 3_600_000) ?? 5000,
    logLevel: str(raw, "logLevel") ?? "info",
  };
  const optional = {
    etcdCa: str(raw, "etcdCa"),
    etcdCert: str(raw, "etcdCert"),
    etcdKey: str(raw, "etcdKey"),
    localStore: str(raw, "localStore"),
    nodeName: str(raw, "nodeName"),
    kubeconfig: str(raw, "kubeconfig"),
    subnetLen: int(raw, "subnetLen", 1, 30),
    subnetLenV6: int(raw, "subnetLenV6", 1, 126),
    underlayIface,
    publicIP,
    mtu: int(raw, "mtu", 576, 65535),
    apiListen,
  };
  for (const [k, v] of Object.entries(optional)) if (v !== undefined) (config as unknown as Record<string, unknown>)[k] = v;
  if (config.nodeName !== undefined && !/^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(config.nodeName)) {
    throw new AgentConfigError(`--node-name: "${config.nodeName}" is not a Kubernetes node name`);
  }
  if ((config.etcdCert || config.etcdKey) && !(config.etcdCert && config.etcdKey)) {
    throw new AgentConfigError("--etcd-cert and --etcd-key go together");
  }
  if (!(LOG_LEVELS as readonly string[]).includes(config.logLevel)) {
    throw new AgentConfigError(`--log-level: unknown level "${config.logLevel}"`);
  }
  const logFormat = str(raw, "logFormat");
  if (logFormat !== undefined) {
    try {
      config.logFormat = resolveLogFormat(logFormat);
    } catch (e) {
      if (e instanceof LogFormatError) throw new AgentConfigError(e.message);
      throw e;
    }
  }
  return config;
}
