// berth on a live Kubernetes cluster, deployed the way a user deploys it: the release is built,
// packed into the OCI image (deploy/kubernetes/build-image.sh) and imported into the node's
// containerd with the sidecar images (build-sidecar-images.sh), and `kubectl apply -f
// deploy/kubernetes/` takes a node with no pod network to Ready pods on berth's overlay and
// berth volumes. The cluster is ../shared/k8s (Kubernetes v1.20.2, containerd 1.6, one node, all
// state under its work dir), started with no pod network of its own.
//
// The kit keeps everything under $WORK, so the manifests applied here are the committed ones
// with host paths moved there: kubelet's root, the CNI dirs, and berth's /run/berth,
// /var/lib/berth, /usr/local/lib/berth (a host may run another berth); the agent's cluster CIDR
// is the kit's. Nothing else changes. Two stand-ins for what a cluster has and the kit has not:
// the kit runs no kube-proxy, so an nftables rule of our own takes the `kubernetes` Service
// address (what in-cluster clients dial) to the API server; and the plugin launchers reach the
// agent's socket through BERTH_CNI_SOCKET in containerd's environment (the default
// /run/berth/cni.sock is the host's).
import { execFile, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { get } from "node:http";
import { basename, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { leaseRows } from "../../testing/cni-plugin.ts";
import { testPrefix } from "../../testing/kernel.ts";
import { until as untilValue } from "../../testing/poll.ts";

const REPO = join(import.meta.dirname, "..", "..");
const KIT = process.env.BERTH_K8S_KIT ?? join(REPO, "..", "shared", "k8s");
const WORK = process.env.BERTH_K8S_WORK ?? "/var/tmp/k8s-work";
const VERSION = (JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string }).version;

/** What the kit needs built before a cluster can start (scripts/setup.sh's kube step). */
function missingForKube(): string[] {
  const need = [
    join(KIT, "scripts", "start-cluster.sh"),
    ...["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"].map((b) => join(WORK, "bin", b)),
    ...["csi-node-driver-registrar", "csi-provisioner"].map((b) => join(WORK, "bin", b)),
    join(WORK, "cni-plugins", "bin", "loopback"),
    join(WORK, "images", "pause.tar"),
    join(WORK, "images", "busybox.tar"),
  ];
  const missing = need.filter((p) => !existsSync(p));
  for (const c of ["containerd", "ctr", "etcd", "runc"]) {
    if (!["/usr/bin", "/usr/sbin", "/usr/local/bin"].some((d) => existsSync(join(d, c)))) missing.push(c);
  }
  return missing;
}

const missing = missingForKube();
if (missing.length > 0 && process.env.CI)
  throw new Error(`Kubernetes kit not built (scripts/setup.sh kube): ${missing.join(", ")}`);
if (missing.length > 0) console.warn(`SKIPPED: Kubernetes live-cluster tests — missing ${missing.join(", ")}`);

const NODE = process.env.NODE_NAME ?? readFileSync("/proc/sys/kernel/hostname", "utf8").trim();
const API_PORT = 16443;
const SERVICE_IP = "10.96.0.1";
const CLUSTER_CIDR = "10.207.0.0/16";
const BUSYBOX = "localhost/k8s/busybox:1.35";
const HOST_PORT = 18480;

const prefix = testPrefix();
/** berth's host dirs for this run (the /run/berth, /var/lib/berth, /usr/local/lib/berth of the node). */
const D = join(WORK, `berth-${prefix}`);
const DIRS = { run: join(D, "run"), state: join(D, "state"), lib: join(D, "lib"), manifests: join(D, "manifests") };
const CNI_SOCKET = join(DIRS.run, "cni.sock");
/** berth-overlay's IPAM store (its dataDir default, /var/lib/berth/overlay, + ipam). */
const OVERLAY_IPAM = join(DIRS.state, "overlay", "ipam");
const kitEnv = {
  ...process.env,
  WORK,
  CNI: "bridge",
  CSI: "0",
  KIT_CSI_RSHARED: "0",
  // no berth of the kit's own: its launchers and cni-server stay out of the CNI bin dir
  BERTH_DIR: join(D, "no-berth"),
  BERTH_CNI_SOCKET: CNI_SOCKET,
  NODE_EXTRA_CA_CERTS: undefined,
};
const kubeconfig = join(WORK, "admin.kubeconfig");
const containerdSock = join(WORK, "containerd", "containerd.sock");
/** Our stand-in for kube-proxy's rule for the `kubernetes` Service. */
const NFT_TABLE = `${prefix}svc`;

function sh(
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
const kubectl = (args: string[], input?: string, timeoutMs = 60_000) =>
  sh(join(WORK, "bin", "kubectl"), [`--kubeconfig=${kubeconfig}`, ...args], { input, timeoutMs });
const kexec = (pod: string, cmd: string) => kubectl(["-n", "bt", "exec", pod, "--", "sh", "-c", cmd]);

/** The committed manifests with the node's host paths moved to the kit's and this run's dirs. */
function renderManifests(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const f of readdirSync(from).filter((n) => n.endsWith(".yaml"))) {
    let text = readFileSync(join(from, f), "utf8");
    // kubelet passes its own paths to the driver: the driver sees them at the same place
    text = text.replaceAll("/var/lib/kubelet", join(WORK, "kubelet"));
    text = text.replace(/path: \/opt\/cni\/bin\b/g, `path: ${join(WORK, "cni-bin")}`);
    text = text.replace(/path: \/etc\/cni\/net\.d\b/g, `path: ${join(WORK, "net.d")}`);
    text = text.replace(/path: \/run\/berth\b/g, `path: ${DIRS.run}`);
    text = text.replace(/path: \/var\/lib\/berth\b/g, `path: ${DIRS.state}`);
    text = text.replace(/path: \/usr\/local\/lib\/berth\b/g, `path: ${DIRS.lib}`);
    text = text.replace("--cluster-cidr=10.244.0.0/16", `--cluster-cidr=${CLUSTER_CIDR}`);
    writeFileSync(join(to, f), text);
  }
}

function links(): string[] {
  const out = JSON.parse(run0("ip", ["-j", "link", "show"]) || "[]") as { ifname: string }[];
  return out.map((l) => l.ifname);
}
/** until(), what first. */
const until = <T>(what: string, probe: () => T | Promise<T>, ok: (v: T) => boolean, timeoutMs: number, intervalMs: number) =>
  untilValue(probe, ok, what, timeoutMs, intervalMs);

/** Runs a command; its stdout, or "" when it fails (teardown and read-backs that may find nothing). */
function run0(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  } catch {
    return "";
  }
}

/**
 * Volume image files (vol-*.img) under berth's state dir. The driver attaches them in its own
 * mount namespace, so the kernel names a loop device's backing file by the driver's path
 * (/var/lib/berth/csi/...); the file name is what identifies it from the host.
 */
const imagesSeen = new Set<string>();
function volumeImages(): string[] {
  const found = run0("find", [DIRS.state, "-name", "vol-*.img"]).split("\n").filter(Boolean);
  for (const f of found) imagesSeen.add(basename(f));
  return found;
}
/** Loop devices backed by a volume image this run's driver made. */
function berthLoops(): string[] {
  volumeImages();
  const doc = JSON.parse(run0("losetup", ["-J", "-l"]) || '{"loopdevices":[]}') as {
    loopdevices?: { name: string; "back-file": string | null }[];
  };
  return (doc.loopdevices ?? [])
    .filter((l) => imagesSeen.has(basename((l["back-file"] ?? "").replace(/ \(deleted\)$/, ""))))
    .map((l) => `${l.name} ${l["back-file"]}`);
}
/** Mount points under dir (dir itself excluded). */
function mountsUnder(dir: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((t) => t.startsWith(`${dir}/`));
}

/** A shell command for a busybox pod printing the body of GET / (busybox's nc: its static wget crashes resolving). */
const httpFromPod = (host: string, port: number) => `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${host} ${port} | tail -1`;

/** The body of GET / (trimmed). */
function httpGet(host: string, port: number): Promise<string> {
  return new Promise((done, fail) => {
    const req = get({ host, port, path: "/", timeout: 3000 }, (res) => {
      let body = "";
      res.on("data", (b) => {
        body += b.toString();
      });
      res.on("end", () => done(body.trim()));
    });
    req.on("timeout", () => req.destroy(new Error(`${host}:${port}: timed out`)));
    req.on("error", fail);
  });
}

interface PodView {
  status: { phase: string; podIP?: string; podIPs?: { ip: string }[] };
  spec: { nodeName?: string };
}

const pod = (name: string, extra: Record<string, unknown> = {}, command = ["sleep", "3600"]) => ({
  apiVersion: "v1",
  kind: "Pod",
  metadata: { name, namespace: "bt", labels: { app: name } },
  spec: {
    terminationGracePeriodSeconds: 1,
    enableServiceLinks: false,
    containers: [{ name: "main", image: BUSYBOX, imagePullPolicy: "Never", command, ...extra }],
  },
});

describe.skipIf(missing.length > 0).sequential("berth on Kubernetes (kubectl apply -f deploy/kubernetes/)", () => {
  let started = false;
  let linksBefore: string[] = [];
  let berthTableBefore = false;
  let podCIDR = "";
  /** Host ends of the pods' veths (on berth0) while the pods ran. */
  const podLinks: string[] = [];
  let nodeIP = "";
  const logs = async (): Promise<string> => {
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
  };

  beforeAll(async () => {
    linksBefore = links();
    berthTableBefore = run0("nft", ["list", "table", "inet", "berth"]) !== "";
    for (const d of Object.values(DIRS)) mkdirSync(d, { recursive: true });
    // The image from the release, and the sidecars' from the kit's static binaries.
    await sh("node", [join(REPO, "scripts", "release.mjs")], { timeoutMs: 180_000 });
    const rel = readdirSync(join(REPO, "build", "release")).find(
      (f) => f.startsWith(`berth-${VERSION}-linux-`) && f.endsWith(".tar.gz"),
    );
    const images = join(D, "images");
    await sh(
      "bash",
      [join(REPO, "deploy", "kubernetes", "build-image.sh"), join(REPO, "build", "release", rel!), join(images, "berth-oci.tar")],
      {
        timeoutMs: 180_000,
      },
    );
    await sh("bash", [join(REPO, "deploy", "kubernetes", "build-sidecar-images.sh"), join(WORK, "bin"), images], {
      timeoutMs: 120_000,
    });

    // berth's state dir holds the volumes' mounts, which the driver's Bidirectional mount
    // propagates to the host: its source must be a shared mount, as / is on a systemd host.
    await sh("mount", ["--bind", DIRS.state, DIRS.state]);
    await sh("mount", ["--make-rshared", DIRS.state]);

    started = true;
    await sh("bash", [join(KIT, "scripts", "start-cluster.sh")], { env: kitEnv, timeoutMs: 240_000 });
    // No pod network: the kit's bridge config goes; berth's DaemonSet brings its own.
    rmSync(join(WORK, "net.d", "10-k8s.conflist"), { force: true });
    podCIDR = (await kubectl(["get", "node", NODE, "-o", "jsonpath={.spec.podCIDR}"])).trim();
    nodeIP = (await kubectl(["get", "node", NODE, "-o", 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}'])).trim();

    // kube-proxy's part for in-cluster clients: the `kubernetes` Service to the API server.
    await sh("nft", ["-f", "-"], {
      input: `table ip ${NFT_TABLE} {\n chain out {\n  type nat hook output priority -100;\n  ip daddr ${SERVICE_IP} tcp dport 443 dnat to 127.0.0.1:${API_PORT}\n }\n}\n`,
    });

    for (const f of readdirSync(images)) {
      await sh("ctr", ["-a", containerdSock, "-n", "k8s.io", "images", "import", "--snapshotter", "native", join(images, f)], {
        timeoutMs: 180_000,
      });
    }
    renderManifests(join(REPO, "deploy", "kubernetes"), DIRS.manifests);
    renderManifests(join(REPO, "deploy", "kubernetes", "uninstall"), join(DIRS.manifests, "uninstall"));
    await kubectl(["apply", "-f", DIRS.manifests]);
    try {
      for (const ds of ["berth-network", "berth-csi"]) {
        await kubectl(["-n", "berth-system", "rollout", "status", `ds/${ds}`, "--timeout=150s"], undefined, 160_000);
      }
      await kubectl(["wait", "--for=condition=Ready", `node/${NODE}`, "--timeout=60s"], undefined, 70_000);
      await kubectl(["create", "namespace", "bt"]);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${await logs()}`);
    }
  }, 600_000);

  afterAll(async () => {
    if (started) {
      await sh("bash", [join(KIT, "scripts", "stop-cluster.sh")], { env: { ...kitEnv, PURGE: "1" }, timeoutMs: 240_000 }).catch(
        (e) => console.error(e),
      );
    }
    run0("nft", ["delete", "table", "ip", NFT_TABLE]);
    // What the uninstall Job removes, in case a test failed before it ran.
    for (const l of ["berth0", "berth.1"]) if (!linksBefore.includes(l) && links().includes(l)) run0("ip", ["link", "del", l]);
    if (!berthTableBefore) run0("nft", ["delete", "table", "inet", "berth"]);
    for (const l of berthLoops()) run0("losetup", ["-d", l.split(" ")[0]!]);
    for (const m of mountsUnder(D).sort().reverse()) run0("umount", ["-l", m]);
    run0("umount", ["-l", DIRS.state]);
    rmSync(D, { recursive: true, force: true });
  }, 300_000);

  it("one apply takes the node from no pod network to Ready: berth installed into the host, agent on the node's podCIDR", async () => {
    const conf = JSON.parse(readFileSync(join(WORK, "net.d", "10-berth.conflist"), "utf8")) as { plugins: { type: string }[] };
    expect(conf.plugins[0]!.type).toBe("berth-overlay");
    expect(existsSync(join(WORK, "cni-bin", "berth-overlay"))).toBe(true);
    expect(existsSync(join(DIRS.lib, "manifest.json"))).toBe(true);
    // The agent took the node's podCIDR and published its VTEP on the Node.
    const node = JSON.parse(await kubectl(["get", "node", NODE, "-o", "json"])) as {
      metadata: { annotations: Record<string, string> };
    };
    expect(node.metadata.annotations["berth.io/public-ip"]).toBe(nodeIP);
    const overlay = JSON.parse(readFileSync(join(DIRS.run, "overlay.json"), "utf8")) as { subnet?: string };
    expect(JSON.stringify(overlay)).toContain(podCIDR.split("/")[0]!.replace(/\.0$/, "."));
    // The CSI driver is registered with kubelet.
    const csinode = JSON.parse(await kubectl(["get", "csinode", NODE, "-o", "json"])) as {
      spec: { drivers: { name: string }[] | null };
    };
    expect((csinode.spec.drivers ?? []).map((d) => d.name)).toContain("berth.csi.local");
  });

  it("two pods get addresses from berth and reach each other and a hostPort", async () => {
    const web = pod("web", { ports: [{ containerPort: 8080, hostPort: HOST_PORT }] }, [
      "sh",
      "-c",
      "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "List", items: [pod("a"), web] }));
    await kubectl(["-n", "bt", "wait", "--for=condition=Ready", "pod/a", "pod/web", "--timeout=90s"], undefined, 100_000).catch(
      async (e) => {
        throw new Error(
          `${(e as Error).message}\n${await kubectl(["-n", "bt", "describe", "pods"]).catch(() => "")}\n${await logs()}`,
        );
      },
    );
    const ip = async (name: string) =>
      (JSON.parse(await kubectl(["-n", "bt", "get", "pod", name, "-o", "json"])) as PodView).status.podIP!;
    const [a, w] = [await ip("a"), await ip("web")];
    const net = podCIDR.split("/")[0]!.split(".").slice(0, 3).join(".");
    expect(a.startsWith(`${net}.`)).toBe(true);
    expect(w.startsWith(`${net}.`)).toBe(true);
    expect(a).not.toBe(w);
    // berth-overlay's leases (network "berth", the installed config's name) hold both.
    expect(leaseRows(OVERLAY_IPAM, "berth").map((r) => r.ip)).toEqual(expect.arrayContaining([a, w]));
    podLinks.push(
      ...(JSON.parse(run0("ip", ["-j", "link", "show", "master", "berth0"]) || "[]") as { ifname: string }[]).map(
        (l) => l.ifname,
      ),
    );
    // The pod's eth0 holds the address berth gave it.
    expect(await kexec("a", "ip -4 -o addr show dev eth0")).toContain(`${a}/`);
    await until(
      "a pings web",
      () =>
        kexec("a", `ping -c1 -W2 ${w}`).then(
          () => true,
          () => false,
        ),
      (ok) => ok,
      20_000,
      500,
    );
    expect(await kexec("web", `ping -c1 -W2 ${a}`)).toContain("1 packets received");
    // hostPort: from the host at the node's address, and from pod a through the node's address.
    const fromHost = await until(
      "host -> hostPort",
      () => httpGet(nodeIP, HOST_PORT),
      (s) => s !== "",
      20_000,
      500,
    ).catch(async (e) => {
      const web = await kexec(
        "web",
        `wget -q -T 3 -O - http://127.0.0.1:8080/ 2>&1; echo; wget -q -T 3 -O - http://${w}:8080/ 2>&1`,
      ).catch((x) => (x as Error).message);
      throw new Error(
        `${(e as Error).message}\nweb itself: ${web}\n${run0("nft", ["list", "table", "inet", "berth"])}\n${await logs()}`,
      );
    });
    expect(fromHost).toBe("hello-from-web");
    const fromPod = await until(
      "pod -> hostPort",
      () => kexec("a", httpFromPod(nodeIP, HOST_PORT)).catch(() => ""),
      (s) => s.trim() !== "",
      20_000,
      500,
    );
    expect(fromPod.trim()).toBe("hello-from-web");
  }, 180_000);

  it("a StatefulSet's berth-block volume keeps its data when the StatefulSet is deleted and created again", async () => {
    const sts = {
      apiVersion: "apps/v1",
      kind: "StatefulSet",
      metadata: { name: "db", namespace: "bt" },
      spec: {
        serviceName: "db",
        replicas: 1,
        selector: { matchLabels: { app: "db" } },
        template: {
          metadata: { labels: { app: "db" } },
          spec: {
            terminationGracePeriodSeconds: 1,
            enableServiceLinks: false,
            containers: [
              {
                name: "main",
                image: BUSYBOX,
                imagePullPolicy: "Never",
                command: [
                  "sh",
                  "-c",
                  "[ -f /data/first ] || { cat /proc/sys/kernel/random/uuid > /data/first; sync; }; exec sleep 3600",
                ],
                volumeMounts: [{ name: "data", mountPath: "/data" }],
              },
            ],
          },
        },
        volumeClaimTemplates: [
          {
            metadata: { name: "data" },
            spec: {
              accessModes: ["ReadWriteOnce"],
              storageClassName: "berth-block",
              resources: { requests: { storage: "64Mi" } },
            },
          },
        ],
      },
    };
    const ready = async () => {
      await until(
        "db-0 exists",
        () => kubectl(["-n", "bt", "get", "pod", "db-0", "-o", "name"]).catch(() => ""),
        (s) => s.trim() !== "",
        60_000,
        500,
      );
      await kubectl(["-n", "bt", "wait", "--for=condition=Ready", "pod/db-0", "--timeout=120s"], undefined, 130_000).catch(
        async (e) => {
          throw new Error(
            `${(e as Error).message}\n${await kubectl(["-n", "bt", "describe", "pod/db-0", "pvc"]).catch(() => "")}\n${await logs()}`,
          );
        },
      );
    };
    await kubectl(["apply", "-f", "-"], JSON.stringify(sts));
    await ready();
    const first = (await kexec("db-0", "cat /data/first")).trim();
    expect(first).toMatch(/^[0-9a-f-]{36}$/);
    // A filesystem of its own, on a loop device backed by berth's state dir.
    expect(await kexec("db-0", "grep ' /data ' /proc/mounts")).toContain("ext4");
    expect(berthLoops().length).toBeGreaterThan(0);
    const pv = (await kubectl(["-n", "bt", "get", "pvc", "data-db-0", "-o", "jsonpath={.spec.volumeName}"])).trim();
    expect(pv).not.toBe("");

    await kubectl(["-n", "bt", "delete", "statefulset", "db", "--wait=true", "--timeout=90s"], undefined, 100_000);
    await until(
      "db-0 gone",
      () => kubectl(["-n", "bt", "get", "pod", "db-0", "-o", "name"]).catch(() => ""),
      (s) => s.trim() === "",
      90_000,
      500,
    );
    await kubectl(["apply", "-f", "-"], JSON.stringify(sts));
    await ready();
    expect((await kexec("db-0", "cat /data/first")).trim()).toBe(first);
    expect((await kubectl(["-n", "bt", "get", "pvc", "data-db-0", "-o", "jsonpath={.spec.volumeName}"])).trim()).toBe(pv);
  }, 300_000);

  it("an ephemeral inline volume is created for its pod, enforces its size, and goes with it", async () => {
    const eph = pod("eph", { volumeMounts: [{ name: "scratch", mountPath: "/scratch" }] });
    (eph.spec as Record<string, unknown>).volumes = [
      { name: "scratch", csi: { driver: "berth.csi.local", volumeAttributes: { size: "32Mi" } } },
    ];
    await kubectl(["apply", "-f", "-"], JSON.stringify(eph));
    await kubectl(["-n", "bt", "wait", "--for=condition=Ready", "pod/eph", "--timeout=90s"], undefined, 100_000).catch(
      async (e) => {
        throw new Error(
          `${(e as Error).message}\n${await kubectl(["-n", "bt", "describe", "pod/eph"]).catch(() => "")}\n${await logs()}`,
        );
      },
    );
    expect((await kexec("eph", "echo scratch-data > /scratch/f && cat /scratch/f")).trim()).toBe("scratch-data");
    // 40 MB do not fit in 32 MiB.
    const full = await kexec("eph", "dd if=/dev/zero of=/scratch/big bs=1M count=40 2>&1; echo rc=$?");
    expect(full).toMatch(/No space left on device|rc=1/);
    await kubectl(["-n", "bt", "delete", "pod", "eph", "--wait=true", "--timeout=90s"], undefined, 100_000);
  }, 200_000);

  it("PVC expansion and VolumeSnapshot restore: not on this cluster (see the note)", () => {
    // csi-resizer and csi-snapshotter are deploy/kubernetes/addons/ (their images are not built
    // by the kit, and snapshots need the snapshot CRDs and controller, which it has not either).
    // The CSI calls they make are covered by csi-sanity and the CSI tests (ControllerExpandVolume,
    // NodeExpandVolume, CreateSnapshot, volumes from snapshots).
    expect(existsSync(join(REPO, "deploy", "kubernetes", "addons", "50-csi-resizer-snapshotter.yaml"))).toBe(true);
  });

  it("kubectl delete of everything and the uninstall Job leave no link, lease, loop device, mount or file", async () => {
    await kubectl(["delete", "namespace", "bt", "--wait=true", "--timeout=150s"], undefined, 160_000);
    // Every PV of the driver goes with its claim (reclaimPolicy Delete) while the driver still runs.
    await until(
      "berth PVs deleted",
      async () => (await kubectl(["get", "pv", "-o", "jsonpath={.items[*].metadata.name}"])).trim(),
      (s) => s === "",
      90_000,
      1000,
    );
    expect(berthLoops()).toEqual([]);
    // The pods' address leases and attachment records went with them (CNI DEL).
    expect(leaseRows(OVERLAY_IPAM, "berth")).toEqual([]);
    expect(readdirSync(join(DIRS.state, "overlay", "attachments"))).toEqual([]);
    await kubectl(["delete", "-f", DIRS.manifests, "--wait=true", "--timeout=150s"], undefined, 160_000);
    await until(
      "berth pods gone",
      async () => (await kubectl(["-n", "berth-system", "get", "pods", "-o", "name"]).catch(() => "")).trim(),
      (s) => s === "",
      120_000,
      1000,
    );
    await kubectl(["apply", "-f", join(DIRS.manifests, "uninstall")]);
    await kubectl(
      ["-n", "kube-system", "wait", "--for=condition=complete", "job/berth-uninstall", "--timeout=120s"],
      undefined,
      130_000,
    ).catch(async (e) => {
      throw new Error(
        `${(e as Error).message}\n${await kubectl(["-n", "kube-system", "logs", "job/berth-uninstall"]).catch(() => "")}`,
      );
    });
    const now = links();
    for (const l of ["berth0", "berth.1"]) if (!linksBefore.includes(l)) expect(now).not.toContain(l);
    // The pods' host ends, seen on berth's bridge while they ran.
    expect(podLinks.length).toBeGreaterThan(0);
    expect(now.filter((l) => podLinks.includes(l))).toEqual([]);
    if (!berthTableBefore) expect(run0("nft", ["list", "table", "inet", "berth"])).toBe("");
    expect(berthLoops()).toEqual([]);
    expect(mountsUnder(DIRS.state)).toEqual([]);
    expect(mountsUnder(join(WORK, "kubelet", "pods"))).toEqual([]);
    expect(readdirSync(join(WORK, "cni-bin")).filter((f) => f.startsWith("berth-"))).toEqual([]);
    expect(existsSync(join(WORK, "net.d", "10-berth.conflist"))).toBe(false);
    expect(readdirSync(DIRS.lib)).toEqual([]);
    expect(readdirSync(DIRS.state)).toEqual([]);
    await kubectl(["-n", "kube-system", "delete", "job", "berth-uninstall", "--wait=true"]);
  }, 600_000);
});
