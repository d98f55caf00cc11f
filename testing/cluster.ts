// A small overlay cluster on one machine, for the multi-host suite and the overlay benchmark.
//
//   underlay netns <p>u  : bridge <p>br, one veth port per host and one for etcd (10.250.R.0/24)
//   etcd netns     <p>e  : etcd on 10.250.R.254:2379, plus a unix socket the harness uses from
//                          the root netns (unix sockets are not bound to a netns), so the test
//                          process never needs a route into the cluster
//   host netns     <p>hN : 10.250.R.N on <p>u, one overlay agent (`ip netns exec` keeps its PID)
//   container      <p>hNcM: attached by running the berth-overlay CNI executable inside <p>hN
//
// Black-box: the agent and the plugin are commands (overridable: BERTH_MULTIHOST_AGENT, a
// space-separated argv prefix, and BERTH_MULTIHOST_CNI, the plugin executable), everything is read back from
// the kernel (`ip -j`, `bridge -j`) or from the agent's HTTP API over its unix socket. Nothing
// is created in the root netns: no links, no routes, no addresses.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import { testPrefix } from "./kernel.ts";
import { httpOverUnix, until as pollUntil } from "./poll.ts";

export { httpOverUnix };

const execFileAsync = promisify(execFile);
const REPO = resolve(import.meta.dirname, "..");

export const ETCD_PREFIX = "/berth/network";
export const DEVICE = "berth.1";

/** Runs a command; resolves to stdout, rejects with stderr in the message. */
export async function run(cmd: string, args: string[], timeoutMs = 30_000): Promise<string> {
  try {
    const { stdout } = await execFileAsync(cmd, args, { encoding: "utf8", timeout: timeoutMs, maxBuffer: 64 << 20 });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(" ")}: ${(err.stderr ?? "").trim() || err.message}`);
  }
}

/** `ip -n ns -j -d <args>`, parsed. */
export async function ipJson<T = Record<string, unknown>>(ns: string, args: string[]): Promise<T[]> {
  const out = (await run("ip", ["-n", ns, "-j", "-d", ...args])).trim();
  return out ? (JSON.parse(out) as T[]) : [];
}

export async function bridgeJson<T = Record<string, unknown>>(ns: string, args: string[]): Promise<T[]> {
  const out = (await run("bridge", ["-n", ns, "-j", ...args])).trim();
  return out ? (JSON.parse(out) as T[]) : [];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `probe` until `ok` holds; the error names `what` and the last value seen. */
/** testing/poll.ts's until, with the name of what is awaited first. */
export function until<T>(
  what: string,
  probe: () => Promise<T>,
  ok: (v: T) => boolean,
  timeoutMs = 15_000,
  intervalMs = 50,
): Promise<T> {
  return pollUntil(probe, ok, what, timeoutMs, intervalMs);
}

/** A child process that keeps the tail of its output for failure messages and is stopped by PID. */
export class ChildLog {
  private tail = "";
  readonly exited: Promise<number | null>;

  constructor(
    readonly label: string,
    readonly child: ChildProcess,
  ) {
    const keep = (d: Buffer) => {
      this.tail = (this.tail + d.toString()).slice(-32_000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.exited = new Promise((r) => child.once("exit", (code) => r(code)));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  output(): string {
    return `--- ${this.label} (pid ${this.child.pid}) ---\n${this.tail}`;
  }

  /** Sends `signal` to this PID and waits for the exit; SIGKILL after `graceMs`. */
  async stop(signal: NodeJS.Signals = "SIGTERM", graceMs = 10_000): Promise<void> {
    if (!this.running) return;
    process.kill(this.pid, signal);
    const timer = setTimeout(() => {
      if (this.running) process.kill(this.pid, "SIGKILL");
    }, graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- etcd

export class EtcdNode {
  private proc: ChildLog | null = null;

  constructor(
    readonly ns: string,
    readonly ip: string,
    readonly dir: string,
  ) {}

  get endpoint(): string {
    return `http://${this.ip}:2379`;
  }

  /** The harness's own way in: etcd's JSON gateway on a unix socket (see the file comment). */
  get socket(): string {
    return join(this.dir, "etcd.sock:0");
  }

  get pid(): number | undefined {
    return this.proc?.running ? this.proc.pid : undefined;
  }

  async start(): Promise<void> {
    if (this.proc?.running) return;
    // A killed etcd leaves its unix socket file behind, and binding over it fails.
    rmSync(this.socket, { force: true });
    const child = spawn(
      "ip",
      [
        "netns",
        "exec",
        this.ns,
        "etcd",
        "--name",
        "berth-mh",
        "--data-dir",
        join(this.dir, "data"),
        "--listen-client-urls",
        `${this.endpoint},unix://etcd.sock:0`,
        "--advertise-client-urls",
        this.endpoint,
        "--listen-peer-urls",
        `http://${this.ip}:2380`,
        "--initial-advertise-peer-urls",
        `http://${this.ip}:2380`,
        "--initial-cluster",
        `berth-mh=http://${this.ip}:2380`,
        // The benchmark writes 1,000 leases in one transaction.
        "--max-txn-ops",
        "5000",
        "--log-level",
        "error",
      ],
      { cwd: this.dir, stdio: ["ignore", "pipe", "pipe"] },
    );
    this.proc = new ChildLog("etcd", child);
    await until(
      "etcd healthy",
      async () => {
        if (!this.proc?.running) throw new Error("etcd exited");
        return (await httpOverUnix(this.socket, "/health")).status;
      },
      (s) => s === 200,
      15_000,
      100,
    ).catch((e) => {
      throw new Error(`${(e as Error).message}\n${this.proc?.output()}`);
    });
  }

  /** An outage: SIGKILL by PID, data kept for start(). */
  async kill(): Promise<void> {
    await this.proc?.stop("SIGKILL");
  }

  /** A hang: SIGSTOP by PID. Connections stay open and nothing answers until resume(). */
  freeze(): void {
    if (this.proc?.running) process.kill(this.proc.pid, "SIGSTOP");
  }

  resume(): void {
    if (this.proc?.running) process.kill(this.proc.pid, "SIGCONT");
  }

  output(): string {
    return this.proc?.output() ?? "";
  }

  private async gateway<T>(path: string, body: object): Promise<T> {
    const res = await httpOverUnix(this.socket, path, { method: "POST", body: JSON.stringify(body), timeoutMs: 15_000 });
    if (res.status !== 200) throw new Error(`etcd ${path}: HTTP ${res.status} ${res.body}`);
    return JSON.parse(res.body) as T;
  }

  async grant(ttlSeconds: number): Promise<string> {
    return (await this.gateway<{ ID: string }>("/v3/lease/grant", { TTL: ttlSeconds })).ID;
  }

  async revoke(leaseId: string): Promise<void> {
    await this.gateway("/v3/lease/revoke", { ID: leaseId });
  }

  /** Puts many keys in one transaction (one revision, one watch response). */
  async putMany(entries: { key: string; value: string }[], leaseId?: string): Promise<void> {
    const b64 = (s: string) => Buffer.from(s).toString("base64");
    await this.gateway("/v3/kv/txn", {
      success: entries.map((e) => ({
        requestPut: { key: b64(e.key), value: b64(e.value), ...(leaseId ? { lease: leaseId } : {}) },
      })),
    });
  }

  async put(key: string, value: string, leaseId?: string): Promise<void> {
    await this.putMany([{ key, value }], leaseId);
  }

  async list(prefix: string): Promise<{ key: string; value: string; lease?: string }[]> {
    const b64 = (s: string) => Buffer.from(s).toString("base64");
    const end = Buffer.from(prefix);
    end[end.length - 1]!++;
    const res = await this.gateway<{ kvs?: { key: string; value: string; lease?: string }[] }>("/v3/kv/range", {
      key: b64(prefix),
      range_end: end.toString("base64"),
    });
    return (res.kvs ?? []).map((kv) => ({
      key: Buffer.from(kv.key, "base64").toString(),
      value: Buffer.from(kv.value ?? "", "base64").toString(),
      ...(kv.lease ? { lease: kv.lease } : {}),
    }));
  }

  /** etcdctl run inside the etcd netns, against the TCP endpoint the agents use. */
  etcdctl(args: string[]): Promise<string> {
    return run("ip", ["netns", "exec", this.ns, "etcdctl", `--endpoints=${this.endpoint}`, ...args]);
  }
}

// ---------------------------------------------------------------- Kubernetes API server

/** Where the Kubernetes binaries are (kube-apiserver, kubectl): ../shared/k8s's build.sh output. */
export const KUBE_BIN = process.env.BERTH_KUBE_BIN ?? "/var/tmp/k8s-work/bin";

export function kubeBinariesPresent(): boolean {
  return ["kube-apiserver", "kubectl"].every((b) => existsSync(join(KUBE_BIN, b)));
}

/**
 * A real kube-apiserver on etcd, in etcd's namespace on the underlay (port 6443). The harness
 * acts as cluster admin (static token); the agents use a user bound to berth's own ClusterRole
 * from deploy/kubernetes, so a missing verb there fails the agents.
 */
export class KubeApiNode {
  private proc: ChildLog | null = null;
  readonly adminToken = randomBytes(16).toString("hex");
  readonly agentToken = randomBytes(16).toString("hex");

  constructor(
    readonly ns: string,
    readonly ip: string,
    readonly etcdEndpoint: string,
    readonly dir: string,
  ) {
    mkdirSync(dir, { recursive: true });
  }

  get server(): string {
    return `https://${this.ip}:6443`;
  }
  get adminKubeconfig(): string {
    return join(this.dir, "admin.kubeconfig");
  }
  get agentKubeconfig(): string {
    return join(this.dir, "agent.kubeconfig");
  }

  private writeKubeconfig(path: string, user: string, token: string): void {
    writeFileSync(
      path,
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        "  - name: test",
        "    cluster:",
        `      server: ${this.server}`,
        `      certificate-authority: ${join(this.dir, "ca.crt")}`,
        "users:",
        `  - name: ${user}`,
        "    user:",
        `      token: ${token}`,
        "contexts:",
        "  - name: test",
        "    context: { cluster: test, user: " + user + " }",
        "current-context: test",
        "",
      ].join("\n"),
      { mode: 0o600 },
    );
  }

  async start(): Promise<void> {
    const d = this.dir;
    await run("openssl", ["genrsa", "-out", join(d, "sa.key"), "2048"]);
    await run("openssl", ["rsa", "-in", join(d, "sa.key"), "-pubout", "-out", join(d, "sa.pub")]);
    // A CA and a serving certificate for the underlay address, which the agents verify.
    const o = (...args: string[]) => run("openssl", args);
    await o(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      join(d, "ca.key"),
      "-out",
      join(d, "ca.crt"),
      "-days",
      "1",
      "-subj",
      "/CN=berth-test-kube-ca",
    );
    writeFileSync(join(d, "san.cnf"), `subjectAltName=IP:${this.ip}\nextendedKeyUsage=serverAuth\n`);
    await o(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      join(d, "server.key"),
      "-out",
      join(d, "server.csr"),
      "-subj",
      "/CN=kube-apiserver",
    );
    await o(
      "x509",
      "-req",
      "-in",
      join(d, "server.csr"),
      "-CA",
      join(d, "ca.crt"),
      "-CAkey",
      join(d, "ca.key"),
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      join(d, "san.cnf"),
      "-out",
      join(d, "server.crt"),
    );
    writeFileSync(
      join(d, "tokens.csv"),
      `${this.adminToken},admin,admin,system:masters\n${this.agentToken},berth-agent,berth-agent\n`,
      { mode: 0o600 },
    );
    const child = spawn(
      "ip",
      [
        "netns",
        "exec",
        this.ns,
        join(KUBE_BIN, "kube-apiserver"),
        `--etcd-servers=${this.etcdEndpoint}`,
        `--bind-address=${this.ip}`,
        `--advertise-address=${this.ip}`,
        "--secure-port=6443",
        "--insecure-port=0",
        `--tls-cert-file=${join(d, "server.crt")}`,
        `--tls-private-key-file=${join(d, "server.key")}`,
        `--service-account-key-file=${join(d, "sa.pub")}`,
        `--service-account-signing-key-file=${join(d, "sa.key")}`,
        "--service-account-issuer=https://kubernetes.default.svc",
        `--token-auth-file=${join(d, "tokens.csv")}`,
        "--authorization-mode=RBAC",
        // as clusters set it (kubeadm, the kit): berth's DaemonSets are privileged
        "--allow-privileged=true",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--v=1",
      ],
      { cwd: d, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NODE_EXTRA_CA_CERTS: undefined } },
    );
    this.proc = new ChildLog("kube-apiserver", child);
    this.writeKubeconfig(this.adminKubeconfig, "admin", this.adminToken);
    this.writeKubeconfig(this.agentKubeconfig, "berth-agent", this.agentToken);
    await until(
      "kube-apiserver ready",
      async () => {
        if (!this.proc?.running) throw new Error("kube-apiserver exited");
        return (await this.kubectl(["get", "--raw", "/readyz"]).catch(() => "")).trim();
      },
      (s) => s === "ok",
      60_000,
      250,
    ).catch((e) => {
      throw new Error(`${(e as Error).message}\n${this.output()}`);
    });
    // berth's own RBAC for the agent, bound to the agent's user.
    const manifests = join(REPO, "deploy", "kubernetes");
    await this.kubectl(["apply", "-f", join(manifests, "00-namespace.yaml"), "-f", join(manifests, "10-rbac.yaml")]);
    await this.kubectl(["create", "clusterrolebinding", "berth-agent-test", "--clusterrole=berth-network", "--user=berth-agent"]);
  }

  /** kubectl as cluster admin, inside the API server's namespace. */
  kubectl(args: string[], stdin?: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = execFile(
        "ip",
        ["netns", "exec", this.ns, join(KUBE_BIN, "kubectl"), `--kubeconfig=${this.adminKubeconfig}`, ...args],
        { timeout: 30_000, encoding: "utf8" },
        (err, stdout, stderr) =>
          err ? reject(new Error(`kubectl ${args.join(" ")}: ${stderr || err.message}`)) : resolve(stdout),
      );
      if (stdin !== undefined) child.stdin?.end(stdin);
    });
  }

  /** Creates a Node object (no kubelet behind it) with the given pod CIDR, or none. */
  async createNode(name: string, podCIDR?: string): Promise<void> {
    const spec = podCIDR ? { podCIDR, podCIDRs: [podCIDR] } : {};
    await this.kubectl(["create", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "Node", metadata: { name }, spec }));
  }

  async node(name: string): Promise<{ metadata: { annotations?: Record<string, string> }; spec: { podCIDR?: string } }> {
    return JSON.parse(await this.kubectl(["get", "node", name, "-o", "json"]));
  }

  async stop(): Promise<void> {
    await this.proc?.stop("SIGKILL");
  }

  output(): string {
    return this.proc?.output() ?? "";
  }
}

// ---------------------------------------------------------------- hosts and containers

export interface LeaseView {
  subnet: string;
  subnetV6?: string;
  publicIP: string;
  vtepMAC: string;
  key: string;
}

export interface FdbEntry {
  mac: string;
  dst: string;
  state?: string;
  flags?: string[];
}

/** What a CNI plugin printed: a result (ips) or an error (code, msg). */
export interface CniReply {
  exitCode: number;
  json: { code?: number; msg?: string; ips?: { address: string }[] } | undefined;
  stderr: string;
}

export interface Container {
  name: string;
  ns: string;
  host: Host;
  ipv4: string;
  ipv6?: string;
}

export interface AgentOptions {
  /** argv prefix of the agent; default `node --import tsx bin/cli.ts agent` from the checkout. */
  agentCommand: string[];
  store: "etcd" | "local" | "kube";
  clusterCidrs: string[];
  leaseTtlSeconds: number;
  reconcileIntervalMs: number;
  extraArgs: string[];
}

export class Host {
  agent: ChildLog | null = null;
  readonly containers: Container[] = [];
  private containerSeq = 0;

  constructor(
    readonly cluster: Cluster,
    readonly index: number,
    readonly ns: string,
    readonly underlayIface: string,
    readonly underlayIP: string,
    readonly dir: string,
  ) {
    mkdirSync(join(dir, "state"), { recursive: true });
    mkdirSync(join(dir, "run"), { recursive: true });
  }

  get name(): string {
    return `h${this.index}`;
  }
  get runDir(): string {
    return join(this.dir, "run");
  }
  get stateDir(): string {
    return join(this.dir, "state");
  }
  get socket(): string {
    return join(this.dir, "agent.sock");
  }
  get cniDataDir(): string {
    return join(this.dir, "cni");
  }

  /** Starts the agent as `ip netns exec <ns> <agent> ...` (exec keeps one PID). */
  startAgent(extraArgs: string[] = []): ChildLog {
    if (this.agent?.running) throw new Error(`${this.name}: agent already running`);
    const o = this.cluster.agentOptions;
    const args = [
      "--store",
      o.store,
      ...(o.store === "etcd" ? ["--etcd-endpoints", this.cluster.etcd!.endpoint] : []),
      ...(o.store === "kube" ? ["--kubeconfig", this.cluster.kube!.agentKubeconfig, "--node-name", this.name] : []),
      ...o.clusterCidrs.flatMap((c) => ["--cluster-cidr", c]),
      "--underlay-iface",
      this.underlayIface,
      "--state-dir",
      this.stateDir,
      "--run-dir",
      this.runDir,
      "--api-socket",
      this.socket,
      "--lease-ttl",
      String(o.leaseTtlSeconds),
      "--reconcile-interval",
      String(o.reconcileIntervalMs),
      ...o.extraArgs,
      ...extraArgs,
    ];
    const [cmd, ...pre] = o.agentCommand;
    const child = spawn("ip", ["netns", "exec", this.ns, cmd!, ...pre, ...args], {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.agent = new ChildLog(`agent ${this.name}`, child);
    return this.agent;
  }

  async stopAgent(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await this.agent?.stop(signal);
  }

  api(path: string): Promise<{ status: number; body: string }> {
    return httpOverUnix(this.socket, path, { timeoutMs: 3000 });
  }

  async waitReady(timeoutMs = 30_000): Promise<void> {
    await until(
      "agent ready",
      async () => (await this.api("/readyz")).status,
      (s) => s === 200,
      timeoutMs,
      50,
    ).catch((e) => {
      throw new Error(`${this.name}: ${(e as Error).message}\n${this.agent?.output()}`);
    });
  }

  async lease(): Promise<LeaseView> {
    const res = await this.api("/v1/lease");
    if (res.status !== 200) throw new Error(`${this.name} /v1/lease: HTTP ${res.status} ${res.body}`);
    return JSON.parse(res.body) as LeaseView;
  }

  /** The VXLAN device as the kernel holds it, or null. */
  async device(): Promise<{ address: string; ifindex: number; linkinfo?: { info_data?: Record<string, unknown> } } | null> {
    try {
      return (await ipJson<{ address: string; ifindex: number }>(this.ns, ["link", "show", "dev", DEVICE]))[0] ?? null;
    } catch {
      return null;
    }
  }

  /** Permanent neighbour entries on the VXLAN device (both families). */
  async neighbours(): Promise<{ dst: string; lladdr: string; state: string[] }[]> {
    const all = await ipJson<{ dst: string; lladdr: string; state: string[] }>(this.ns, [
      "neigh",
      "show",
      "dev",
      DEVICE,
      "nud",
      "permanent",
    ]).catch(() => []);
    return all;
  }

  /** Unicast forwarding entries on the VXLAN device (the device's own multicast list has no dst). */
  async fdb(): Promise<FdbEntry[]> {
    type Row = Partial<FdbEntry> & { mac: string };
    const all: Row[] = await bridgeJson<Row>(this.ns, ["fdb", "show", "dev", DEVICE]).catch(() => []);
    return all.filter((e): e is FdbEntry => e.dst !== undefined);
  }

  /** Routes through the VXLAN device that somebody added (not the kernel's connected routes). */
  async routes(family: 4 | 6 = 4): Promise<{ dst: string; gateway?: string; flags: string[]; protocol?: string }[]> {
    const all = await ipJson<{ dst: string; gateway?: string; flags: string[]; protocol?: string }>(this.ns, [
      `-${family}`,
      "route",
      "show",
      "dev",
      DEVICE,
    ]).catch(() => []);
    return all.filter((r) => r.protocol !== "kernel" && !r.dst.startsWith("fe80:"));
  }

  /** Runs the CNI plugin for this host, inside its netns; the cold path unless `fastPath`. */
  async cni(
    command: "ADD" | "DEL" | "STATUS" | "CHECK",
    container: { name: string; ns: string },
    /** Through the agent's CNI socket (<run-dir>/cni.sock) instead of the cold path. */
    options: { fastPath?: boolean } = {},
  ): Promise<CniReply> {
    const config = {
      cniVersion: "1.1.0",
      name: "berth-mh",
      type: "berth-overlay",
      runDir: this.runDir,
      dataDir: this.cniDataDir,
    };
    const plugin = this.cluster.cniPlugin;
    return new Promise((resolve, reject) => {
      const child = spawn("ip", ["netns", "exec", this.ns, plugin], {
        env: {
          PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
          CNI_COMMAND: command,
          CNI_CONTAINERID: `mh-${container.name}`,
          CNI_NETNS: `/run/netns/${container.ns}`,
          CNI_IFNAME: "eth0",
          CNI_PATH: dirname(plugin),
          // Never the default socket: that may be some other agent's, in another netns.
          BERTH_CNI_SOCKET: options.fastPath ? join(this.runDir, "cni.sock") : "off",
        },
        stdio: ["pipe", "pipe", "pipe"],
      });
      let out = "";
      let err = "";
      child.stdout.on("data", (d) => {
        out += d;
      });
      child.stderr.on("data", (d) => {
        err += d;
      });
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      child.on("error", reject);
      child.on("close", (code) => {
        clearTimeout(timer);
        let json: CniReply["json"];
        try {
          json = out.trim() ? (JSON.parse(out) as CniReply["json"]) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ exitCode: code ?? -1, json, stderr: err });
      });
      child.stdin.on("error", () => undefined);
      child.stdin.end(JSON.stringify(config));
    });
  }

  /** A fresh container netns on this host (registered for cleanup), not attached yet. */
  async containerNetns(): Promise<{ name: string; ns: string }> {
    const name = `${this.name}c${++this.containerSeq}`;
    const ns = `${this.cluster.prefix}${name}`;
    await run("ip", ["netns", "add", ns]);
    this.cluster.namespaces.push(ns);
    return { name, ns };
  }

  /** Creates a container netns and attaches it; the addresses come from the plugin's result. */
  async addContainer(options: { fastPath?: boolean } = {}): Promise<Container> {
    return this.attach(await this.containerNetns(), options);
  }

  async attach({ name, ns }: { name: string; ns: string }, options: { fastPath?: boolean } = {}): Promise<Container> {
    const res = await this.cni("ADD", { name, ns }, options);
    if (res.exitCode !== 0)
      throw new Error(`${name}: ADD failed (exit ${res.exitCode}): ${JSON.stringify(res.json)} ${res.stderr}`);
    const ips = (res.json?.ips ?? []) as { address: string }[];
    const v4 = ips.find((i) => !i.address.includes(":"));
    const v6 = ips.find((i) => i.address.includes(":"));
    if (!v4) throw new Error(`${name}: ADD result has no IPv4 address: ${JSON.stringify(res.json)}`);
    const c: Container = { name, ns, host: this, ipv4: v4.address.split("/")[0]! };
    if (v6) c.ipv6 = v6.address.split("/")[0]!;
    this.containers.push(c);
    return c;
  }
}

// ---------------------------------------------------------------- the cluster

export interface ClusterOptions {
  store?: "etcd" | "local" | "kube";
  clusterCidrs?: string[];
  leaseTtlSeconds?: number;
  reconcileIntervalMs?: number;
  agentCommand?: string[];
  /** The berth-overlay executable (default build/cni/berth-overlay). */
  cniPlugin?: string;
  extraAgentArgs?: string[];
}

export class Cluster {
  readonly prefix = testPrefix();
  readonly dir: string;
  /** Third octet of the underlay 10.250.R.0/24, random per cluster. */
  readonly underlayOctet: number;
  readonly underlayNs: string;
  readonly bridge: string;
  readonly namespaces: string[] = [];
  readonly hosts: Host[] = [];
  etcd: EtcdNode | null = null;
  /** The Kubernetes API server (kube store), beside etcd in etcd's namespace. */
  kube: KubeApiNode | null = null;
  readonly agentOptions: AgentOptions;
  readonly cniPlugin: string;
  private ports = 0;

  private constructor(options: ClusterOptions) {
    this.dir = mkdtempSync(join(tmpdir(), `berth-${this.prefix}-`));
    this.underlayOctet = Number.parseInt(this.prefix.slice(-2), 16);
    this.underlayNs = `${this.prefix}u`;
    this.bridge = `${this.prefix}br`;
    this.agentOptions = {
      agentCommand: options.agentCommand ??
        process.env.BERTH_MULTIHOST_AGENT?.split(/\s+/).filter(Boolean) ?? [
          process.execPath,
          "--import",
          "tsx",
          join(REPO, "bin", "cli.ts"),
          "agent",
        ],
      store: options.store ?? "etcd",
      clusterCidrs: options.clusterCidrs ?? ["10.251.0.0/16"],
      leaseTtlSeconds: options.leaseTtlSeconds ?? 10,
      reconcileIntervalMs: options.reconcileIntervalMs ?? 1000,
      extraArgs: options.extraAgentArgs ?? [],
    };
    this.cniPlugin = options.cniPlugin ?? process.env.BERTH_MULTIHOST_CNI ?? join(REPO, "build", "cni", "berth-overlay");
  }

  /** Builds the underlay (and etcd, for the etcd store). Call destroy() even when this throws. */
  static async create(options: ClusterOptions = {}, onCreated?: (c: Cluster) => void): Promise<Cluster> {
    const c = new Cluster(options);
    onCreated?.(c);
    await c.addNamespace(c.underlayNs);
    await run("ip", ["-n", c.underlayNs, "link", "add", c.bridge, "type", "bridge"]);
    await run("ip", ["-n", c.underlayNs, "link", "set", c.bridge, "up"]);
    if (c.agentOptions.store === "etcd" || c.agentOptions.store === "kube") {
      const ns = `${c.prefix}e`;
      const ip = await c.plugIntoUnderlay(ns, 254);
      const dir = join(c.dir, "etcd");
      mkdirSync(dir, { recursive: true });
      c.etcd = new EtcdNode(ns, ip, dir);
      await c.etcd.start();
      if (c.agentOptions.store === "kube") {
        c.kube = new KubeApiNode(ns, ip, c.etcd.endpoint, join(c.dir, "kube"));
        await c.kube.start();
      }
    }
    return c;
  }

  underlayIP(n: number): string {
    return `10.250.${this.underlayOctet}.${n}`;
  }

  private async addNamespace(ns: string): Promise<void> {
    await run("ip", ["netns", "add", ns]);
    this.namespaces.push(ns);
    await run("ip", ["-n", ns, "link", "set", "lo", "up"]);
  }

  /** A new netns wired to the underlay bridge as 10.250.R.n (its link: <p>u); returns its address. */
  async plugIntoUnderlay(ns: string, n: number): Promise<string> {
    await this.addNamespace(ns);
    const port = `${this.prefix}p${this.ports++}`;
    const inside = `${this.prefix}u`;
    await run("ip", ["link", "add", port, "netns", this.underlayNs, "type", "veth", "peer", "name", inside, "netns", ns]);
    await run("ip", ["-n", this.underlayNs, "link", "set", port, "master", this.bridge, "up"]);
    const ip = this.underlayIP(n);
    await run("ip", ["-n", ns, "addr", "add", `${ip}/24`, "dev", inside]);
    await run("ip", ["-n", ns, "link", "set", inside, "up"]);
    return ip;
  }

  /** A new host netns on the underlay (no agent yet). */
  async addHost(): Promise<Host> {
    const index = this.hosts.length + 1;
    const ns = `${this.prefix}h${index}`;
    const ip = await this.plugIntoUnderlay(ns, index);
    const host = new Host(this, index, ns, `${this.prefix}u`, ip, join(this.dir, `h${index}`));
    this.hosts.push(host);
    return host;
  }

  /** Every agent's output, for failure messages. */
  logs(): string {
    return [...this.hosts.map((h) => h.agent?.output() ?? ""), this.etcd?.output() ?? "", this.kube?.output() ?? ""].join("\n");
  }

  /** Stops agents and etcd by PID, deletes every netns and the temp dir. Safe to call twice. */
  async destroy(): Promise<void> {
    for (const h of this.hosts) await h.stopAgent("SIGKILL").catch(() => undefined);
    await this.kube?.stop().catch(() => undefined);
    await this.etcd?.kill().catch(() => undefined);
    // Containers first (their veths go with them), then hosts, etcd and the underlay.
    for (const ns of [...this.namespaces].reverse()) {
      await run("ip", ["netns", "del", ns]).catch(() => undefined);
    }
    this.namespaces.length = 0;
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Runs `ip monitor` (for `ipObjects`) and `bridge monitor fdb` in a host's netns and keeps the
 * lines that mention the overlay device: every kernel change to the peers' entries.
 */
export function monitorDevice(
  host: Host,
  ipObjects: string[] = ["route", "neigh", "link"],
): { lines: string[]; stop(): Promise<void> } {
  const lines: string[] = [];
  const procs = [
    spawn("ip", ["-n", host.ns, "monitor", ...ipObjects], { stdio: ["ignore", "pipe", "pipe"] }),
    spawn("bridge", ["-n", host.ns, "monitor", "fdb"], { stdio: ["ignore", "pipe", "pipe"] }),
  ].map((child, i) => {
    let buf = "";
    child.stdout.on("data", (d) => {
      buf += d;
      const parts = buf.split("\n");
      buf = parts.pop()!;
      for (const l of parts) if (l.includes(DEVICE)) lines.push(`${host.name} ${l}`);
    });
    return new ChildLog(`${i ? "bridge" : "ip"} monitor ${host.name}`, child);
  });
  return {
    lines,
    stop: async () => {
      for (const p of procs) await p.stop("SIGKILL");
    },
  };
}

// ---------------------------------------------------------------- traffic

/** One ICMP echo from `from` to `to` (busybox ping, 2 s wait): true when answered. */
export async function ping(from: Container, to: string): Promise<boolean> {
  try {
    await run("ip", ["netns", "exec", from.ns, "busybox", "ping", "-c1", "-W2", to], 10_000);
    return true;
  } catch {
    return false;
  }
}

/** Every ordered pair of containers that does not answer a ping (empty = full mesh). */
export async function unreachablePairs(containers: Container[], family: 4 | 6 = 4): Promise<string[]> {
  const pairs: [Container, Container][] = [];
  for (const a of containers) for (const b of containers) if (a !== b) pairs.push([a, b]);
  const results = await Promise.all(
    pairs.map(async ([a, b]) => {
      const to = family === 4 ? b.ipv4 : b.ipv6;
      if (!to) return `${a.name}→${b.name} (no IPv6 address)`;
      return (await ping(a, to)) ? null : `${a.name}→${b.name} (${to})`;
    }),
  );
  return results.filter((r): r is string => r !== null);
}

/** Waits until the container's addresses are usable (IPv6 DAD done). */
export async function waitAddressesSettled(c: Container): Promise<void> {
  await until(
    `${c.name} addresses settled`,
    () => ipJson<{ addr_info: { flags?: string[]; tentative?: boolean }[] }>(c.ns, ["addr", "show", "dev", "eth0"]),
    (links) => links[0]?.addr_info.every((a) => !a.tentative && !(a.flags ?? []).includes("tentative")) ?? false,
    10_000,
  );
}

const TCP_SINK = `
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
s.settimeout(20)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(65536)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
`;

const TCP_SOURCE = `
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[3]))
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
`;

/**
 * Sends `bytes` random bytes over TCP from one container to another; resolves to what the
 * sender sent and what the receiver counted and hashed, as "<bytes> <sha256>" each.
 */
export async function tcpTransfer(
  from: Container,
  to: Container,
  bytes: number,
  family: 4 | 6 = 4,
): Promise<{ sent: string; received: string }> {
  const addr = family === 4 ? to.ipv4 : to.ipv6!;
  const port = String(20_000 + Math.floor(Math.random() * 20_000));
  const sink = spawn("ip", ["netns", "exec", to.ns, "python3", "-c", TCP_SINK, addr, port], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const sinkLog = new ChildLog(`tcp sink in ${to.name}`, sink);
  try {
    let out = "";
    sink.stdout.on("data", (d) => {
      out += d;
    });
    await until(
      "tcp sink listening",
      async () => out,
      (o) => o.includes("listening"),
      10_000,
      20,
    );
    const sent = (await run("ip", ["netns", "exec", from.ns, "python3", "-c", TCP_SOURCE, addr, port, String(bytes)])).trim();
    // The sink prints its count and hash once the sender's FIN arrives, then exits.
    await Promise.race([sinkLog.exited, sleep(20_000)]);
    const received = out.trim().split("\n")[1]?.trim() ?? `nothing counted: ${sinkLog.output()}`;
    return { sent, received };
  } finally {
    await sinkLog.stop("SIGKILL");
  }
}

/** Reads /proc/<pid>/status VmRSS in KiB. */
export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : Number.NaN;
}
