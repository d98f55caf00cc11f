// containerd 1.6 with its CRI plugin as a real CNI engine for tests and benchmarks (the path
// Kubernetes takes): a private containerd (root, state, sockets, CNI dirs under one test
// directory), a sandbox image built here (no registry is reachable), and a small CRI client
// on kubernetes/cri-api's api.proto. What containerd needs on these machines:
// ../shared/notes/engines.md.
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { installBerth } from "./install.ts";
import { testPrefix } from "./kernel.ts";

const run = promisify(execFile);

const REPO = resolve(import.meta.dirname, "..");
/** kubernetes/cri-api v0.36.3 (package runtime.v1), vendored beside the checkout. */
export const CRI_PROTO = resolve(REPO, "../shared/vendor/cri-api-v0.36.3/api.proto");
export const CONTAINERD = "/usr/bin/containerd";
export const CTR = "/usr/bin/ctr";
export const RUNC = "/usr/sbin/runc";
const BUSYBOX = "/usr/bin/busybox";
/** The reference plugins (Debian containernetworking-plugins); the CRI plugin always runs their `loopback`. */
export const REFERENCE_CNI = "/usr/lib/cni";
export const SANDBOX_IMAGE = "berth.test/pause:1";

/** What the containerd tests need and this machine lacks. */
export function missingForContainerd(): string[] {
  return [CONTAINERD, CTR, RUNC, BUSYBOX, CRI_PROTO, join(REFERENCE_CNI, "loopback"), "/usr/bin/nsenter"].filter(
    (f) => !existsSync(f),
  );
}

// ---------------------------------------------------------------- the CRI client

export interface PortMapping {
  protocol?: "TCP" | "UDP" | "SCTP";
  container_port: number;
  host_port: number;
  host_ip?: string;
}

export interface PodSpec {
  name: string;
  /** Unique per pod: the sandbox's uid (and the attempt) make its id. */
  uid: string;
  namespace?: string;
  port_mappings?: PortMapping[];
  annotations?: Record<string, string>;
}

export interface PodStatus {
  id: string;
  state: string;
  /** The pod's address as the CNI result gave it to containerd. */
  ip: string;
  additionalIps: string[];
  /** The sandbox's network namespace (a bind mount under containerd's state dir). */
  netnsPath: string;
}

type Callback<T> = (err: grpc.ServiceError | null, res?: T) => void;
// biome-ignore lint/suspicious/noExplicitAny: requests and replies are the proto's plain objects
type Rpc = (req: any, options: grpc.CallOptions, cb: Callback<any>) => void;

/** The few RuntimeService calls a pod sandbox's life takes. */
export class CriClient {
  private readonly client: grpc.Client & Record<string, Rpc>;
  private readonly images: grpc.Client & Record<string, Rpc>;

  constructor(socket: string) {
    const def = loadSync(CRI_PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    // biome-ignore lint/suspicious/noExplicitAny: the loaded package is untyped
    const pkg = grpc.loadPackageDefinition(def) as any;
    this.client = new pkg.runtime.v1.RuntimeService(`unix://${socket}`, grpc.credentials.createInsecure());
    this.images = new pkg.runtime.v1.ImageService(`unix://${socket}`, grpc.credentials.createInsecure());
  }

  // biome-ignore lint/suspicious/noExplicitAny: see Rpc
  private call<T = any>(method: string, req: unknown, timeoutMs = 60_000, client = this.client): Promise<T> {
    return new Promise((done, fail) =>
      client[method]!.call(client, req, { deadline: new Date(Date.now() + timeoutMs) }, (e, r) =>
        e ? fail(new Error(`CRI ${method}: ${e.details || e.message}`)) : done(r as T),
      ),
    );
  }

  /** Whether the CRI plugin knows the image (it learns of an imported image asynchronously). */
  async hasImage(ref: string): Promise<boolean> {
    const r = await this.call<{ image?: { id: string } | null }>("ImageStatus", { image: { image: ref } }, 10_000, this.images);
    return Boolean(r.image?.id);
  }

  async version(): Promise<{ runtime_name: string; runtime_version: string; runtime_api_version: string }> {
    return this.call("Version", { version: "v1" });
  }

  /** RunPodSandbox: the sandbox runs once the CNI ADD of its network has succeeded. Returns its id. */
  async runPod(p: PodSpec): Promise<string> {
    const config = {
      metadata: { name: p.name, uid: p.uid, namespace: p.namespace ?? "default", attempt: 0 },
      hostname: p.name,
      log_directory: "",
      port_mappings: p.port_mappings ?? [],
      annotations: p.annotations ?? {},
      labels: {},
      linux: {},
    };
    const r = await this.call<{ pod_sandbox_id: string }>("RunPodSandbox", { config });
    return r.pod_sandbox_id;
  }

  async status(id: string): Promise<PodStatus> {
    const r = await this.call<{
      status: { id: string; state: string; network?: { ip: string; additional_ips: { ip: string }[] } };
      info: Record<string, string>;
    }>("PodSandboxStatus", { pod_sandbox_id: id, verbose: true });
    const info = JSON.parse(r.info.info ?? "{}") as {
      runtimeSpec?: { linux?: { namespaces?: { type: string; path?: string }[] } };
    };
    const netns = info.runtimeSpec?.linux?.namespaces?.find((n) => n.type === "network")?.path ?? "";
    return {
      id: r.status.id,
      state: r.status.state,
      ip: r.status.network?.ip ?? "",
      additionalIps: (r.status.network?.additional_ips ?? []).map((a) => a.ip),
      netnsPath: netns,
    };
  }

  /** StopPodSandbox: containerd runs CNI DEL for the pod's network. */
  async stopPod(id: string): Promise<void> {
    await this.call("StopPodSandbox", { pod_sandbox_id: id });
  }

  async removePod(id: string): Promise<void> {
    await this.call("RemovePodSandbox", { pod_sandbox_id: id });
  }

  async listPods(): Promise<string[]> {
    const r = await this.call<{ items: { id: string }[] }>("ListPodSandbox", {});
    return r.items.map((i) => i.id);
  }

  close(): void {
    this.client.close();
    this.images.close();
  }
}

// ---------------------------------------------------------------- the sandbox image

/**
 * An OCI image-layout tarball of one layer holding busybox-static, whose entrypoint is
 * `busybox sleep infinity` (busybox picks its applet from argv[0], so it cannot be `/pause`).
 */
export async function buildSandboxImage(dir: string): Promise<string> {
  const work = join(dir, "image");
  const blobs = join(work, "oci", "blobs", "sha256");
  mkdirSync(join(work, "layer", "bin"), { recursive: true });
  mkdirSync(blobs, { recursive: true });
  copyFileSync(BUSYBOX, join(work, "layer", "bin", "busybox"));
  chmodSync(join(work, "layer", "bin", "busybox"), 0o755);
  const layerTar = join(work, "layer.tar");
  await run("tar", ["--owner=0", "--group=0", "--numeric-owner", "-C", join(work, "layer"), "-cf", layerTar, "bin"]);
  const blob = (data: Buffer): { digest: string; size: number } => {
    const hex = createHash("sha256").update(data).digest("hex");
    writeFileSync(join(blobs, hex), data);
    return { digest: `sha256:${hex}`, size: data.length };
  };
  const layer = blob(readFileSync(layerTar));
  const config = blob(
    Buffer.from(
      JSON.stringify({
        architecture: process.arch === "arm64" ? "arm64" : "amd64",
        os: "linux",
        config: { Entrypoint: ["/bin/busybox", "sleep", "infinity"], WorkingDir: "/" },
        rootfs: { type: "layers", diff_ids: [layer.digest] },
      }),
    ),
  );
  const manifest = blob(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layer }],
      }),
    ),
  );
  writeFileSync(join(work, "oci", "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  writeFileSync(
    join(work, "oci", "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          ...manifest,
          annotations: { "io.containerd.image.name": SANDBOX_IMAGE, "org.opencontainers.image.ref.name": "1" },
        },
      ],
    }),
  );
  const out = join(dir, "sandbox-image.tar");
  await run("tar", ["-C", join(work, "oci"), "-cf", out, "oci-layout", "index.json", "blobs"]);
  return out;
}

// ---------------------------------------------------------------- containerd

export interface ContainerdOptions {
  /** Everything of this containerd goes under here. */
  dir: string;
  cniBinDir: string;
  cniConfDir: string;
  /** Added to containerd's environment, which its CNI library passes on to every plugin. */
  env?: Record<string, string>;
  /** The sandbox image tarball (buildSandboxImage); built in `dir` when absent. */
  image?: string;
}

/** A private containerd with the CRI plugin; stop() removes every pod it still has, then ends it. */
export class Containerd {
  readonly socket: string;
  readonly cri: CriClient;
  private log = "";
  private readonly exited: Promise<number | null>;

  private constructor(
    readonly dir: string,
    private readonly child: ChildProcess,
  ) {
    this.socket = join(dir, "containerd.sock");
    child.stdout!.on("data", (b: Buffer) => this.keep(b));
    child.stderr!.on("data", (b: Buffer) => this.keep(b));
    this.exited = new Promise((done) => child.once("exit", (code) => done(code)));
    this.cri = new CriClient(this.socket);
  }

  private keep(b: Buffer): void {
    this.log = (this.log + b.toString()).slice(-64_000);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The tail of containerd's log (errors of CNI plugins show up here). */
  output(): string {
    return this.log;
  }

  static async start(o: ContainerdOptions): Promise<Containerd> {
    mkdirSync(o.dir, { recursive: true });
    const config = join(o.dir, "config.toml");
    writeFileSync(config, configToml(o));
    const child = spawn(CONTAINERD, ["--config", config], {
      env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", ...o.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const c = new Containerd(o.dir, child);
    try {
      await c.waitServing();
      const image = o.image ?? (await buildSandboxImage(o.dir));
      await run(CTR, ["-a", c.socket, "-n", "k8s.io", "images", "import", "--no-unpack", image], { timeout: 60_000 });
      const deadline = Date.now() + 15_000;
      while (!(await c.cri.hasImage(SANDBOX_IMAGE))) {
        if (Date.now() > deadline) throw new Error(`the CRI plugin does not see ${SANDBOX_IMAGE} after its import`);
        await new Promise((r) => setTimeout(r, 50));
      }
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  private async waitServing(): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`containerd exited with ${this.child.exitCode}:\n${this.log}`);
      try {
        await this.cri.version();
        return;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`containerd's CRI did not answer: ${(e as Error).message}\n${this.log}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Stops and removes every pod sandbox (their shims live under /run/containerd whatever the
   * config says, and their netns mounts under our state dir), then ends containerd by its PID.
   */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      try {
        for (const id of await this.cri.listPods()) {
          await this.cri.stopPod(id).catch(() => {});
          await this.cri.removePod(id).catch(() => {});
        }
      } catch {
        // containerd is not answering: nothing more to ask it
      }
      this.cri.close();
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
      await this.exited;
      clearTimeout(timer);
    }
    // Anything containerd left mounted under our directory (sandbox shm, netns files).
    await unmountUnder(this.dir);
    removeEmptyPodCgroupParents();
  }
}

/**
 * The CRI plugin puts pod cgroups under "k8s.io" in every hierarchy and leaves that parent
 * behind; rmdir removes it only when no pod (of any containerd) is left in it.
 */
function removeEmptyPodCgroupParents(): void {
  const roots = ["/sys/fs/cgroup", ...readdirSync("/sys/fs/cgroup").map((d) => join("/sys/fs/cgroup", d))];
  for (const root of roots) {
    try {
      rmdirSync(join(root, "k8s.io"));
    } catch {
      // absent, or still in use
    }
  }
}

/** Unmounts (lazily, deepest first) whatever is mounted under `dir`. */
async function unmountUnder(dir: string): Promise<void> {
  const mounts = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await run("umount", ["-l", m]).catch(() => {});
}

function configToml(o: ContainerdOptions): string {
  const d = o.dir;
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  return `version = 2
root = "${d}/root"
state = "${d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "${d}/containerd.sock"

[ttrpc]
  address = "${d}/containerd.sock.ttrpc"

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "${d}/opt"

[${cri}]
  sandbox_image = "${SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_cdi = false

[${cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "runc"

[${cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[${cri}.containerd.runtimes.runc.options]
  BinaryName = "${RUNC}"
  SystemdCgroup = false

[${cri}.cni]
  bin_dir = "${o.cniBinDir}"
  conf_dir = "${o.cniConfDir}"
  max_conf_num = 1
`;
}

/** Runs `argv` inside the network namespace at `netnsPath` (nsenter). */
export function inNetns(netnsPath: string, argv: string[], timeoutMs = 10_000): Promise<{ stdout: string; stderr: string }> {
  return run("nsenter", [`--net=${netnsPath}`, "--", ...argv], { timeout: timeoutMs, encoding: "utf8" });
}

/** Removes `dir` once nothing is mounted under it any more. */
export async function removeDir(dir: string): Promise<void> {
  await unmountUnder(dir);
  rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------- the network chains

/** A network of one test run: where its plugins and config are, and what it names in the kernel. */
export interface CriNetwork {
  prefix: string;
  /** CNI bin dir (the CRI plugin's bin_dir) and conf dir (its conf_dir, one conflist). */
  binDir: string;
  confDir: string;
  network: string;
  bridge: string;
  /** "10.X.Y": the pods' /24. */
  base: string;
  gateway: string;
  /** berth's host-local database directory, and its nftables table (inet). */
  dataDir: string;
  table: string;
  /** The sandbox image tarball, built once for every containerd of the run. */
  image: string;
  /** Removes the bridge, IFBs, nftables tables and iptables chains the network made. */
  cleanup(): Promise<void>;
}

/** A /24 inside 10.0.0.0/8 that no host route overlaps. */
function freeSubnet(): { base: string; gateway: string } {
  const taken = (JSON.parse(execFileSyncText("ip", ["-j", "-4", "route", "show", "table", "all"])) as { dst: string }[])
    .map((r) => r.dst)
    .filter((d) => /^\d/.test(d));
  const toInt = (ip: string) => ip.split(".").reduce((n, o) => n * 256 + Number(o), 0);
  for (let i = 0; i < 200; i++) {
    const base = `10.${100 + Math.floor(Math.random() * 150)}.${Math.floor(Math.random() * 256)}`;
    const lo = toInt(`${base}.0`);
    const clash = taken.some((d) => {
      const [addr, len = "32"] = d.split("/");
      const size = 2 ** (32 - Number(len));
      const start = Math.floor(toInt(addr!) / size) * size;
      return start < lo + 256 && lo < start + size;
    });
    if (!clash) return { base, gateway: `${base}.1` };
  }
  throw new Error("no free 10.x.y.0/24 for the pod network");
}

function execFileSyncText(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function linksStartingWith(prefix: string): string[] {
  return (JSON.parse(execFileSyncText("ip", ["-j", "link", "show"])) as { ifname: string }[])
    .map((l) => l.ifname)
    .filter((n) => n.startsWith(prefix));
}

/**
 * berth as an operator installs it: `berth install` (from this checkout) into `dir` with the
 * bridge network, whose conflist is then given this run's names (bridge, network, nftables
 * table, IFB prefix, lease database dir) so that nothing collides with the host's or another
 * test's. The bin dir also gets the reference `loopback` the CRI plugin runs.
 */
export async function installBerthChain(dir: string): Promise<CriNetwork> {
  const prefix = testPrefix();
  const { base, gateway } = freeSubnet();
  const { binDir, confDir } = await installBerth(dir, ["--network", "bridge", "--subnet", `${base}.0/24`]);
  copyFileSync(join(REFERENCE_CNI, "loopback"), join(binDir, "loopback"));
  const file = join(confDir, "10-berth.conflist");
  const conf = JSON.parse(readFileSync(file, "utf8")) as { name: string; plugins: Record<string, unknown>[] };
  const net: Omit<CriNetwork, "cleanup" | "image"> = {
    prefix,
    binDir,
    confDir,
    network: `${prefix}-cri`,
    bridge: `${prefix}br`,
    base,
    gateway,
    dataDir: join(dir, "ipam"),
    table: prefix,
  };
  conf.name = net.network;
  for (const p of conf.plugins) {
    if (p.type === "berth-bridge") {
      p.bridge = net.bridge;
      p.nftTable = net.table;
      (p.ipam as Record<string, unknown>).dataDir = net.dataDir;
    }
    if (p.type === "berth-portmap" || p.type === "berth-firewall") p.nftTable = net.table;
    if (p.type === "berth-bandwidth") p.ifbPrefix = prefix;
  }
  writeFileSync(file, `${JSON.stringify(conf, null, 2)}\n`);
  const image = await buildSandboxImage(dir);
  return {
    ...net,
    image,
    cleanup: async () => {
      for (const l of linksStartingWith(prefix)) await run("ip", ["link", "del", l]).catch(() => {});
      for (const fam of ["inet", "bridge"]) await run("nft", ["delete", "table", fam, net.table]).catch(() => {});
    },
  };
}

/**
 * The same chain on the reference plugins (Debian containernetworking-plugins): bridge +
 * host-local, portmap, firewall, bandwidth, straight from /usr/lib/cni. They program iptables
 * (portmap's and firewall's chains) and name their IFBs after the container; DEL removes each
 * pod's rules, cleanup() removes the bridge.
 */
export function referenceChain(dir: string, image: string): CriNetwork {
  const prefix = testPrefix();
  const { base, gateway } = freeSubnet();
  const confDir = join(dir, "ref-conf");
  mkdirSync(confDir, { recursive: true });
  const net: CriNetwork = {
    prefix,
    binDir: REFERENCE_CNI,
    confDir,
    network: `${prefix}-ref`,
    bridge: `${prefix}br`,
    base,
    gateway,
    dataDir: join(dir, "ref-ipam"),
    table: "",
    image,
    cleanup: async () => {
      await run("ip", ["link", "del", net.bridge]).catch(() => {});
    },
  };
  const conf = {
    cniVersion: "1.0.0",
    name: net.network,
    plugins: [
      {
        type: "bridge",
        bridge: net.bridge,
        isGateway: true,
        ipMasq: true,
        hairpinMode: true,
        ipam: {
          type: "host-local",
          dataDir: net.dataDir,
          ranges: [[{ subnet: `${base}.0/24` }]],
          routes: [{ dst: "0.0.0.0/0" }],
        },
      },
      { type: "portmap", capabilities: { portMappings: true } },
      { type: "firewall" },
      { type: "bandwidth", capabilities: { bandwidth: true } },
    ],
  };
  writeFileSync(join(confDir, "10-ref.conflist"), `${JSON.stringify(conf, null, 2)}\n`);
  return net;
}
