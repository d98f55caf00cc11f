// A live single-node Kubernetes from ../shared/k8s (v1.20.2, containerd 1.6, all state under its
// work dir) with berth deployed by its own manifests, for conformance/engines/kubernetes.test.ts
// and conformance/bench/k8s.bench.ts.
//
// The kit keeps everything under $WORK, so the manifests applied are the committed ones with host
// paths moved there: kubelet's root, the CNI dirs, and berth's /run/berth, /var/lib/berth,
// /usr/local/lib/berth (a host may run another berth); the agent's cluster CIDR is the kit's.
// The installer and the uninstall Job get that lib dir as --prefix (mounted at the same path
// under /host), so that the plugin launchers name the Node and bundles where the host has them.
// Nothing else changes. Two stand-ins for what a cluster has and the kit has not: the kit runs
// no kube-proxy, so an nftables rule of ours takes the `kubernetes` Service address (what
// in-cluster clients dial) to the API server; and the plugin launchers reach the agent's socket
// through BERTH_CNI_SOCKET in containerd's environment (the default /run/berth/cni.sock is the
// host's).
import { execFile, execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { testPrefix } from "./kernel.ts";
import { until } from "./poll.ts";

export const REPO = join(import.meta.dirname, "..");
export const KIT = process.env.BERTH_K8S_KIT ?? join(REPO, "..", "shared", "k8s");
export const WORK = process.env.BERTH_K8S_WORK ?? "/var/tmp/k8s-work";
const VERSION = (JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string }).version;

export const NODE = process.env.NODE_NAME ?? readFileSync("/proc/sys/kernel/hostname", "utf8").trim();
const API_PORT = 16443;
const SERVICE_IP = "10.96.0.1";
export const CLUSTER_CIDR = "10.207.0.0/16";
export const BUSYBOX = "localhost/k8s/busybox:1.35";

/** The snapshot CRDs in the kit's Kubernetes source (external-snapshotter's; v1beta1 stored). */
export const SNAPSHOT_CRDS = join(WORK, "src", "kubernetes", "cluster", "addons", "volumesnapshots", "crd");

/** What the kit needs built before a cluster can start (scripts/setup.sh's kube step). */
export function missingForKube(): string[] {
  const need = [
    join(KIT, "scripts", "start-cluster.sh"),
    ...["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"].map((b) => join(WORK, "bin", b)),
    ...["csi-node-driver-registrar", "csi-provisioner"].map((b) => join(WORK, "bin", b)),
    join(WORK, "cni-plugins", "bin", "loopback"),
    join(WORK, "images", "pause.tar"),
    join(WORK, "images", "busybox.tar"),
    SNAPSHOT_CRDS,
  ];
  const missing = need.filter((p) => !existsSync(p));
  for (const c of ["containerd", "ctr", "etcd", "runc"]) {
    if (!["/usr/bin", "/usr/sbin", "/usr/local/bin"].some((d) => existsSync(join(d, c)))) missing.push(c);
  }
  return missing;
}

export function sh(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 60_000, encoding: "utf8", env: opts.env ?? process.env, maxBuffer: 64 << 20 },
      (err, stdout, stderr) =>
        err
          ? reject(new Error(`${cmd} ${args.join(" ")}: ${(stderr || err.message).trim()}\n${stdout.slice(-2000)}`))
          : resolve(stdout),
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Runs a command; its stdout, or "" when it fails (teardown and read-backs that may find nothing). */
export function run0(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  } catch {
    return "";
  }
}

export function links(): string[] {
  const out = JSON.parse(run0("ip", ["-j", "link", "show"]) || "[]") as { ifname: string }[];
  return out.map((l) => l.ifname);
}

/** Mount points under dir (dir itself excluded). */
export function mountsUnder(dir: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((t) => t.startsWith(`${dir}/`));
}

export const kubeconfig = join(WORK, "admin.kubeconfig");
export const kubectl = (args: string[], input?: string, timeoutMs = 60_000) =>
  sh(join(WORK, "bin", "kubectl"), [`--kubeconfig=${kubeconfig}`, ...args], { input, timeoutMs });

/** A Kubernetes resource quantity ("123456Ki", "2Gi", "1500M", "1048576") in bytes. */
export function quantityBytes(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$/.exec(q);
  if (!m) throw new Error(`not a quantity: ${q}`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15 };
  return Number(m[1]) * (m[2] ? unit[m[2] as keyof typeof unit] : 1);
}

/** berth's StorageClasses (deploy/kubernetes/20-csidriver.yaml). */
export const STORAGE_CLASSES = ["berth-dir", "berth-block"];

/** A CSIStorageCapacity object (storage.k8s.io/v1alpha1, as Kubernetes 1.20 serves it). */
export interface StorageCapacity {
  storageClassName: string;
  capacity?: string;
  nodeTopology?: { matchLabels?: Record<string, string> };
  metadata: { ownerReferences?: { kind: string; name: string }[] };
}

/** Every CSIStorageCapacity object in the cluster. */
export async function storageCapacities(): Promise<StorageCapacity[]> {
  const list = await kubectl(["get", "csistoragecapacities.v1alpha1.storage.k8s.io", "-A", "-o", "json"]);
  return (JSON.parse(list) as { items: StorageCapacity[] }).items;
}

/** The kit's cluster with berth's images imported; berth deployed on demand. */
export class KubeKit {
  readonly prefix = testPrefix();
  /** berth's host dirs for this run (the /run/berth, /var/lib/berth, /usr/local/lib/berth of the node). */
  readonly dir = join(WORK, `berth-${this.prefix}`);
  readonly dirs = {
    run: join(this.dir, "run"),
    state: join(this.dir, "state"),
    lib: join(this.dir, "lib"),
    manifests: join(this.dir, "manifests"),
  };
  /** berth-overlay's IPAM store (its dataDir default, /var/lib/berth/overlay, + ipam). */
  readonly overlayIpam = join(this.dirs.state, "overlay", "ipam");
  /** Our stand-in for kube-proxy's rule for the `kubernetes` Service. */
  private readonly nftTable = `${this.prefix}svc`;
  private started = false;
  private capacityTracking = false;
  private linksBefore: string[] = [];
  private berthTableBefore = false;
  podCIDR = "";
  nodeIP = "";
  /** Volume image files seen (their loop devices are named by the driver's path). */
  private readonly imagesSeen = new Set<string>();

  /** agentLogLevel: the agent's --log-level (debug logs every CNI invocation it serves, with its duration). */
  constructor(private readonly opts: { agentLogLevel?: string } = {}) {}

  get env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      WORK,
      CNI: "bridge",
      CSI: "0",
      KIT_CSI_RSHARED: "0",
      // no berth of the kit's own: its launchers and cni-server stay out of the CNI bin dir
      BERTH_DIR: join(this.dir, "no-berth"),
      BERTH_CNI_SOCKET: join(this.dirs.run, "cni.sock"),
      NODE_EXTRA_CA_CERTS: undefined,
    };
  }

  /** True when a berth link or table of these names existed before this run (then they are not ours). */
  existedBefore(link: string): boolean {
    return this.linksBefore.includes(link);
  }
  get berthTableExistedBefore(): boolean {
    return this.berthTableBefore;
  }

  /**
   * Builds the release and the images, starts the kit's cluster on the reference bridge (its
   * own pod network, 10-k8s.conflist) and imports the images. Call stop() even when this throws.
   */
  async start(): Promise<void> {
    this.linksBefore = links();
    this.berthTableBefore = run0("nft", ["list", "table", "inet", "berth"]) !== "";
    for (const d of Object.values(this.dirs)) mkdirSync(d, { recursive: true });
    // The image from the release, and the sidecars' from the kit's static binaries.
    await sh("node", [join(REPO, "scripts", "release.mjs")], { timeoutMs: 180_000 });
    const rel = readdirSync(join(REPO, "build", "release")).find(
      (f) => f.startsWith(`berth-${VERSION}-linux-`) && f.endsWith(".tar.gz"),
    );
    const images = join(this.dir, "images");
    const deploy = join(REPO, "deploy", "kubernetes");
    await sh("bash", [join(deploy, "build-image.sh"), join(REPO, "build", "release", rel!), join(images, "berth-oci.tar")], {
      timeoutMs: 180_000,
    });
    await sh("bash", [join(deploy, "build-sidecar-images.sh"), join(WORK, "bin"), images], { timeoutMs: 120_000 });

    // berth's state dir holds the volumes' mounts, which the driver's Bidirectional mount
    // propagates to the host: its source must be a shared mount, as / is on a systemd host.
    await sh("mount", ["--bind", this.dirs.state, this.dirs.state]);
    await sh("mount", ["--make-rshared", this.dirs.state]);

    // A cluster another run started in the same work dir is not ours to stop.
    const running = livePidFiles(join(WORK, "run"));
    if (running.length > 0) {
      throw new Error(`a kit cluster is already running in ${WORK} (${running.join(", ")}): stop it first`);
    }
    this.started = true;
    removeInstalled();
    await sh("bash", [join(KIT, "scripts", "start-cluster.sh")], { env: this.env, timeoutMs: 240_000 });
    this.podCIDR = (await kubectl(["get", "node", NODE, "-o", "jsonpath={.spec.podCIDR}"])).trim();
    this.nodeIP = (
      await kubectl(["get", "node", NODE, "-o", 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}'])
    ).trim();

    // kube-proxy's part for in-cluster clients: the `kubernetes` Service to the API server.
    await sh("nft", ["-f", "-"], {
      input: `table ip ${this.nftTable} {\n chain out {\n  type nat hook output priority -100;\n  ip daddr ${SERVICE_IP} tcp dport 443 dnat to 127.0.0.1:${API_PORT}\n }\n}\n`,
    });
    const sock = join(WORK, "containerd", "containerd.sock");
    for (const f of readdirSync(images)) {
      await sh("ctr", ["-a", sock, "-n", "k8s.io", "images", "import", "--snapshotter", "native", join(images, f)], {
        timeoutMs: 180_000,
      });
    }
    this.renderManifests(deploy, this.dirs.manifests);
    this.renderManifests(join(deploy, "uninstall"), join(this.dirs.manifests, "uninstall"));
  }

  /**
   * Turns storage capacity tracking on. On 1.20 it is alpha: the CSIStorageCapacity gate on the
   * API server and the scheduler, and storage.k8s.io/v1alpha1 served. The kit starts both
   * without, so each is restarted with its own command line plus those flags, by the PID in the
   * kit's pid file, the kit's way (own session, log appended, pid file updated: stop-cluster.sh
   * stops the new process). Call it before deployBerth: a CSIDriver created while the gate is
   * off loses its storageCapacity field, which cannot change afterwards.
   */
  async enableStorageCapacity(): Promise<void> {
    this.capacityTracking = true;
    const gate = "--feature-gates=CSIStorageCapacity=true";
    await this.restartKitProcess("kube-apiserver", [gate, "--runtime-config=storage.k8s.io/v1alpha1=true"]);
    await until(
      () =>
        kubectl(["get", "--raw", "/apis/storage.k8s.io/v1alpha1"]).then(
          () => true,
          () => false,
        ),
      (ok) => ok,
      "the API server serving storage.k8s.io/v1alpha1",
      120_000,
      500,
    );
    const port = await this.restartKitProcess("kube-scheduler", [gate]);
    await until(
      () =>
        sh("curl", ["-fsSk", `https://127.0.0.1:${port}/healthz`]).then(
          () => true,
          () => false,
        ),
      (ok) => ok,
      "the scheduler healthy",
      60_000,
      500,
    );
  }

  /** Restarts a kit process with `extra` flags; returns its --secure-port. */
  private async restartKitProcess(name: string, extra: string[]): Promise<string> {
    const pidFile = join(WORK, "run", `${name}.pid`);
    const pid = Number(readFileSync(pidFile, "utf8").trim());
    const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
    if (!argv[0] || basename(argv[0]) !== name) throw new Error(`pid ${pid} in ${pidFile} is not ${name}: ${argv.join(" ")}`);
    const gone = () => !existsSync(`/proc/${pid}`) || /^\S+ \S+ Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
    process.kill(pid, "SIGTERM");
    const ended = await until(gone, (g) => g, `${name} (pid ${pid}) gone after SIGTERM`, 20_000, 100).catch(() => false);
    if (!ended) {
      process.kill(pid, "SIGKILL");
      await until(gone, (g) => g, `${name} (pid ${pid}) gone after SIGKILL`, 10_000, 100);
    }
    const log = openSync(join(WORK, "logs", `${name}.log`), "a");
    const env = { ...process.env };
    delete env.NODE_EXTRA_CA_CERTS;
    const child = spawn(argv[0], [...argv.slice(1), ...extra], { detached: true, stdio: ["ignore", log, log], env });
    closeSync(log);
    child.unref();
    writeFileSync(pidFile, `${child.pid}\n`);
    return argv.find((a) => a.startsWith("--secure-port="))?.split("=")[1] ?? "";
  }

  /** Takes the kit's own pod network away (its config file; no pods may be on it). */
  removeKitNetwork(): void {
    rmSync(join(WORK, "net.d", "10-k8s.conflist"), { force: true });
  }

  /** kubectl apply -f deploy/kubernetes/ (as rendered), then both DaemonSets and the node Ready. */
  async deployBerth(): Promise<void> {
    await kubectl(["apply", "-f", this.dirs.manifests]);
    try {
      for (const ds of ["berth-network", "berth-csi"]) {
        await kubectl(["-n", "berth-system", "rollout", "status", `ds/${ds}`, "--timeout=150s"], undefined, 160_000);
      }
      await kubectl(["wait", "--for=condition=Ready", `node/${NODE}`, "--timeout=60s"], undefined, 70_000);
      // The driver's pod is Ready before kubelet has registered it (node-driver-registrar's call).
      await until(
        async () =>
          JSON.parse(await kubectl(["get", "csinode", NODE, "-o", "json"])) as { spec: { drivers: { name: string }[] | null } },
        (c) => (c.spec.drivers ?? []).some((d) => d.name === "berth.csi.local"),
        "berth.csi.local registered in CSINode",
        60_000,
        250,
      );
      // With capacity tracking on, the scheduler places no pod with a berth claim on a node
      // until the provisioner has published that node's capacity.
      if (this.capacityTracking) {
        await until(
          storageCapacities,
          (items) => STORAGE_CLASSES.every((c) => items.some((i) => i.storageClassName === c && i.capacity)),
          "CSIStorageCapacity objects for berth-dir and berth-block",
          120_000,
          500,
        );
      }
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${await this.logs()}`);
    }
  }

  /** berth's pods' last log lines and descriptions, for failure messages. */
  async logs(): Promise<string> {
    const out = await kubectl([
      "-n",
      "berth-system",
      "logs",
      "--all-containers",
      "--tail=40",
      "-l",
      "app.kubernetes.io/part-of=berth",
    ]).catch((e) => (e as Error).message);
    const desc = await kubectl(["-n", "berth-system", "describe", "pods"]).catch((e) => (e as Error).message);
    return `${out}\n${desc.slice(-4000)}`;
  }

  /** The committed manifests with the node's host paths moved to the kit's and this run's dirs. */
  private renderManifests(from: string, to: string): void {
    mkdirSync(to, { recursive: true });
    for (const f of readdirSync(from).filter((n) => n.endsWith(".yaml"))) {
      let text = readFileSync(join(from, f), "utf8");
      // kubelet passes its own paths to the driver: the driver sees them at the same place
      text = text.replaceAll("/var/lib/kubelet", join(WORK, "kubelet"));
      text = text.replace(/path: \/opt\/cni\/bin\b/g, `path: ${join(WORK, "cni-bin")}`);
      text = text.replace(/path: \/etc\/cni\/net\.d\b/g, `path: ${join(WORK, "net.d")}`);
      text = text.replace(/path: \/run\/berth\b/g, `path: ${this.dirs.run}`);
      text = text.replace(/path: \/var\/lib\/berth\b/g, `path: ${this.dirs.state}`);
      text = text.replace(/path: \/usr\/local\/lib\/berth\b/g, `path: ${this.dirs.lib}`);
      text = text.replace(/mountPath: \/host\/usr\/local\/lib\/berth\b/g, `mountPath: /host${this.dirs.lib}`);
      text = text.replace("args: [install, --root, /host,", `args: [install, --prefix, ${this.dirs.lib}, --root, /host,`);
      text = text.replace("berth uninstall --root /host", `berth uninstall --prefix ${this.dirs.lib} --root /host`);
      text = text.replace("--cluster-cidr=10.244.0.0/16", `--cluster-cidr=${CLUSTER_CIDR}`);
      if (this.opts.agentLogLevel)
        text = text.replace(/^(\s+)- --api-listen=(.*)$/m, `$1- --api-listen=$2\n$1- --log-level=${this.opts.agentLogLevel}`);
      writeFileSync(join(to, f), text);
    }
  }

  /**
   * Volume image files (vol-*.img) under berth's state dir. The driver attaches them in its own
   * mount namespace, so the kernel names a loop device's backing file by the driver's path
   * (/var/lib/berth/csi/...); the file name is what identifies it from the host.
   */
  volumeImages(): string[] {
    const found = run0("find", [this.dirs.state, "-name", "vol-*.img"]).split("\n").filter(Boolean);
    for (const f of found) this.imagesSeen.add(basename(f));
    return found;
  }

  /** Loop devices backed by a volume image this run's driver made. */
  berthLoops(): string[] {
    this.volumeImages();
    const doc = JSON.parse(run0("losetup", ["-J", "-l"]) || '{"loopdevices":[]}') as {
      loopdevices?: { name: string; "back-file": string | null }[];
    };
    return (doc.loopdevices ?? [])
      .filter((l) => this.imagesSeen.has(basename((l["back-file"] ?? "").replace(/ \(deleted\)$/, ""))))
      .map((l) => `${l.name} ${l["back-file"]}`);
  }

  /** Stops the cluster (PURGE=1) and removes whatever of berth's is left on the host. */
  async stop(): Promise<void> {
    if (this.started) {
      await sh("bash", [join(KIT, "scripts", "stop-cluster.sh")], { env: { ...this.env, PURGE: "1" }, timeoutMs: 240_000 }).catch(
        (e) => console.error(e),
      );
    }
    run0("nft", ["delete", "table", "ip", this.nftTable]);
    // What the uninstall Job removes, in case it did not run.
    removeInstalled();
    for (const l of ["berth0", "berth.1"])
      if (!this.linksBefore.includes(l) && links().includes(l)) run0("ip", ["link", "del", l]);
    if (!this.berthTableBefore) run0("nft", ["delete", "table", "inet", "berth"]);
    for (const l of this.berthLoops()) run0("losetup", ["-d", l.split(" ")[0]!]);
    for (const m of mountsUnder(this.dir).sort().reverse()) run0("umount", ["-l", m]);
    run0("umount", ["-l", this.dirs.state]);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * What berth's installer wrote into the kit's CNI dirs (the kit itself puts no berth there:
 * KubeKit.env), left when a run stopped before its uninstall Job: the next install would
 * refuse to replace files it has no record of.
 */
function removeInstalled(): void {
  const bin = join(WORK, "cni-bin");
  for (const f of existsSync(bin) ? readdirSync(bin) : []) if (f.startsWith("berth-")) rmSync(join(bin, f), { force: true });
  rmSync(join(WORK, "net.d", "10-berth.conflist"), { force: true });
}

/** Pid files in `dir` whose process is alive. */
function livePidFiles(dir: string): string[] {
  let names: string[] = [];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith(".pid"));
  } catch {
    return [];
  }
  return names.filter((n) => {
    const pid = Number(readFileSync(join(dir, n), "utf8").trim());
    if (!Number.isInteger(pid) || pid <= 0) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  });
}
