// berth on a live Kubernetes cluster, deployed the way a user deploys it: the release is built,
// packed into the OCI image (deploy/kubernetes/build-image.sh) and imported into the node's
// containerd with the sidecar images (build-sidecar-images.sh), and `kubectl apply -f
// deploy/kubernetes/` takes a node with no pod network to Ready pods on berth's overlay and
// berth volumes. The cluster is ../shared/k8s (Kubernetes v1.20.2, containerd 1.6, one node),
// started on its own bridge network, which is taken away before berth is applied; what the kit
// does differently from a cluster (host paths under its work dir, no kube-proxy) is in
// testing/kube.ts.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { get } from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BUSYBOX,
  KubeKit,
  kubectl,
  links,
  missingForKube,
  mountsUnder,
  NODE,
  quantityBytes,
  REPO,
  run0,
  SNAPSHOT_CRDS,
  STORAGE_CLASSES,
  storageCapacities,
  WORK,
} from "../../testing/kube.ts";
import {
  claim,
  deleteSnapshotLikeCsiSnapshotter,
  expandLikeCsiResizer,
  nodeDriver,
  snapshotLikeCsiSnapshotter,
} from "../../testing/kube-sidecars.ts";
import { leaseRows } from "../../testing/leases.ts";
import { until as untilValue } from "../../testing/poll.ts";

const missing = missingForKube();
if (missing.length > 0 && process.env.CI)
  throw new Error(`Kubernetes kit not built (scripts/setup.sh kube): ${missing.join(", ")}`);
if (missing.length > 0) console.warn(`SKIPPED: Kubernetes live-cluster tests — missing ${missing.join(", ")}`);

const HOST_PORT = 18480;
const kexec = (pod: string, cmd: string) => kubectl(["-n", "bt", "exec", pod, "--", "sh", "-c", cmd]);

/** until(), what first. */
const until = <T>(what: string, probe: () => T | Promise<T>, ok: (v: T) => boolean, timeoutMs: number, intervalMs: number) =>
  untilValue(probe, ok, what, timeoutMs, intervalMs);

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
  const kit = new KubeKit();
  const DIRS = kit.dirs;
  const OVERLAY_IPAM = kit.overlayIpam;
  let podCIDR = "";
  let nodeIP = "";
  /** Host ends of the pods' veths (on berth0) while the pods ran. */
  const podLinks: string[] = [];
  const logs = () => kit.logs();
  /** Waits for the pods to be Ready; on failure says why (their description, `also`'s, berth's logs). */
  const waitReady = (pods: string[], timeoutS: number, also: string[] = []) =>
    kubectl(
      ["-n", "bt", "wait", "--for=condition=Ready", ...pods.map((p) => `pod/${p}`), `--timeout=${timeoutS}s`],
      undefined,
      (timeoutS + 10) * 1000,
    ).catch(async (e) => {
      const why = await kubectl(["-n", "bt", "describe", ...pods.map((p) => `pod/${p}`), ...also]).catch(() => "");
      throw new Error(`${(e as Error).message}\n${why}\n${await logs()}`);
    });
  /** A claim of `size` in `cls` (WaitForFirstConsumer: bound when its first pod is scheduled). */
  const pvc = (name: string, cls: string, size: string, dataSource?: Record<string, string>) => ({
    apiVersion: "v1",
    kind: "PersistentVolumeClaim",
    metadata: { name, namespace: "bt" },
    spec: {
      accessModes: ["ReadWriteOnce"],
      storageClassName: cls,
      resources: { requests: { storage: size } },
      ...(dataSource ? { dataSource } : {}),
    },
  });
  /** A pod with `claim` at /data, Ready. */
  const startWithClaim = async (name: string, claimName: string) => {
    const p = pod(name, { volumeMounts: [{ name: "data", mountPath: "/data" }] });
    (p.spec as Record<string, unknown>).volumes = [{ name: "data", persistentVolumeClaim: { claimName } }];
    await kubectl(["apply", "-f", "-"], JSON.stringify(p));
    await waitReady([name], 120, ["pvc"]);
  };
  const deletePod = (name: string) =>
    kubectl(["-n", "bt", "delete", "pod", name, "--wait=true", "--timeout=90s"], undefined, 100_000);
  /** The size of the filesystem at /data in the pod, in bytes. */
  const dataSize = async (name: string) => Number((await kexec(name, "df -k /data | tail -1")).trim().split(/\s+/)[1]) * 1024;

  beforeAll(async () => {
    await kit.start();
    podCIDR = kit.podCIDR;
    nodeIP = kit.nodeIP;
    // No pod network: the kit's bridge config goes; berth's DaemonSet brings its own.
    kit.removeKitNetwork();
    await kit.enableStorageCapacity();
    await kit.deployBerth();
    await kubectl(["create", "namespace", "bt"]);
  }, 600_000);

  afterAll(async () => {
    await kit.stop();
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
    await waitReady(["a", "web"], 90);
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

  it("the installed plugins' cold path (no agent) runs the Node berth installed beside them: VERSION, ADD and DEL with no Node on PATH", async () => {
    // What the launchers run when the agent is down (a restart, an upgrade): the Node the
    // installer copied out of the image into berth's lib dir; the host's PATH plays no part.
    const manifest = JSON.parse(readFileSync(join(DIRS.lib, "manifest.json"), "utf8")) as {
      node: string;
      files: { path: string; kind: string }[];
    };
    const nodeCopy = join(DIRS.lib, "bin", "node");
    expect(manifest.node).toBe(nodeCopy);
    expect(manifest.files).toContainEqual(expect.objectContaining({ path: nodeCopy, kind: "exec" }));
    const launcher = join(WORK, "cni-bin", "berth-overlay");
    expect(readFileSync(launcher).includes(Buffer.from(`BERTH-INSTALL-PATHS-V1\0${nodeCopy}\0${DIRS.lib}/cni-node\0`))).toBe(
      true,
    );
    const cold = (command: string, input: string, extra: Record<string, string> = {}) =>
      spawnSync(launcher, [], {
        input,
        encoding: "utf8",
        timeout: 60_000,
        // BERTH_CNI_SOCKET=off: the launcher goes straight to the cold path, as with no agent.
        env: { PATH: "/nonexistent", BERTH_CNI_SOCKET: "off", CNI_COMMAND: command, CNI_PATH: join(WORK, "cni-bin"), ...extra },
      });
    const version = cold("VERSION", '{"cniVersion":"1.0.0"}');
    expect(version.stderr).toBe("");
    expect(JSON.parse(version.stdout).supportedVersions).toContain("1.0.0");

    // A full ADD and DEL into a netns of ours, with the installed network's own plugin config
    // (the agent's run and state dirs are the kit's stand-ins for /run/berth, /var/lib/berth).
    const installed = JSON.parse(readFileSync(join(WORK, "net.d", "10-berth.conflist"), "utf8")) as {
      cniVersion: string;
      name: string;
      plugins: Record<string, unknown>[];
    };
    const conf = JSON.stringify({
      cniVersion: installed.cniVersion,
      name: installed.name,
      ...installed.plugins[0],
      runDir: DIRS.run,
      dataDir: join(DIRS.state, "overlay"),
    });
    const ns = `${kit.prefix}cold`;
    const id = `${kit.prefix}coldctr`;
    const cniEnv = { CNI_CONTAINERID: id, CNI_NETNS: `/run/netns/${ns}`, CNI_IFNAME: "eth0" };
    execFileSync("ip", ["netns", "add", ns]);
    let deleted = false;
    try {
      const add = cold("ADD", conf, cniEnv);
      expect(add.stderr, add.stdout).toBe("");
      expect(add.status).toBe(0);
      const ip = (JSON.parse(add.stdout) as { ips: { address: string }[] }).ips[0]!.address.split("/")[0]!;
      const net = podCIDR.split("/")[0]!.split(".").slice(0, 3).join(".");
      expect(ip.startsWith(`${net}.`)).toBe(true);
      expect(run0("ip", ["-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"])).toContain(`${ip}/`);
      expect(leaseRows(OVERLAY_IPAM, installed.name)).toContainEqual({ ip, container_id: id });
      // On the pod network: a pod reaches the sandbox the cold path made.
      expect(await kexec("a", `ping -c1 -W2 ${ip}`)).toContain("1 packets received");
      const del = cold("DEL", conf, cniEnv);
      expect(del.stderr, del.stdout).toBe("");
      expect(del.status).toBe(0);
      deleted = true;
      expect(leaseRows(OVERLAY_IPAM, installed.name).map((r) => r.container_id)).not.toContain(id);
      expect(run0("ip", ["-n", ns, "-o", "link", "show"]).trim().split("\n")).toHaveLength(1);
    } finally {
      if (!deleted) cold("DEL", conf, cniEnv);
      run0("ip", ["netns", "del", ns]);
    }
  }, 120_000);

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
      await waitReady(["db-0"], 120, ["pvc"]);
    };
    await kubectl(["apply", "-f", "-"], JSON.stringify(sts));
    await ready();
    const first = (await kexec("db-0", "cat /data/first")).trim();
    expect(first).toMatch(/^[0-9a-f-]{36}$/);
    // A filesystem of its own, on a loop device backed by berth's state dir.
    expect(await kexec("db-0", "grep ' /data ' /proc/mounts")).toContain("ext4");
    expect(kit.berthLoops().length).toBeGreaterThan(0);
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
    await waitReady(["eph"], 90);
    expect((await kexec("eph", "echo scratch-data > /scratch/f && cat /scratch/f")).trim()).toBe("scratch-data");
    // 40 MB do not fit in 32 MiB.
    const full = await kexec("eph", "dd if=/dev/zero of=/scratch/big bs=1M count=40 2>&1; echo rc=$?");
    expect(full).toMatch(/No space left on device|rc=1/);
    await deletePod("eph");
  }, 200_000);

  // The kit has no csi-resizer or csi-snapshotter (nor the snapshot controller):
  // testing/kube-sidecars.ts stands in for them, making their CSI call and API writes for one
  // object. Everything after them is the cluster's own: the API server's checks of the claim,
  // kubelet's stage and NodeExpandVolume and its update of the claim, the provisioner's
  // CreateVolume from the snapshot.
  it("a PVC is expanded: the claim's request grows, and kubelet stages the volume at the new size and records it", async () => {
    const csi = nodeDriver();
    try {
      await kubectl(["apply", "-f", "-"], JSON.stringify(pvc("grow", "berth-dir", "32Mi")));
      await startWithClaim("grow", "grow");
      await kexec("grow", "echo kept > /data/before && sync");
      const before = await dataSize("grow");
      expect(before).toBeLessThanOrEqual(32 * 2 ** 20);
      // 40 MB do not fit yet.
      expect(await kexec("grow", "dd if=/dev/zero of=/data/big bs=1M count=40 2>&1; echo rc=$?")).toMatch(/rc=1/);
      await kexec("grow", "rm -f /data/big");
      // Offline, which either kind of expansion berth advertises allows (OFFLINE where ext4
      // cannot grow while mounted, as on these machines).
      await deletePod("grow");
      await kubectl([
        "-n",
        "bt",
        "patch",
        "pvc",
        "grow",
        "-p",
        JSON.stringify({ spec: { resources: { requests: { storage: "96Mi" } } } }),
      ]);
      const { capacityBytes, nodeExpansionRequired } = await expandLikeCsiResizer(csi, "bt", "grow");
      expect(capacityBytes).toBeGreaterThanOrEqual(96 * 2 ** 20);
      expect(nodeExpansionRequired).toBe(true);
      expect((await claim("bt", "grow")).status.conditions?.map((c) => c.type)).toEqual(["FileSystemResizePending"]);

      await startWithClaim("grow", "grow");
      // kubelet's NodeExpandVolume succeeded: it sets the claim's capacity and clears the condition.
      const done = await until(
        "the claim's status at the new size",
        () => claim("bt", "grow"),
        (c) => quantityBytes(c.status.capacity?.storage ?? "0") >= 96 * 2 ** 20 && (c.status.conditions ?? []).length === 0,
        60_000,
        500,
      ).catch(async (e) => {
        throw new Error(
          `${(e as Error).message}\n${await kubectl(["-n", "bt", "describe", "pod/grow", "pvc/grow"])}\n${await logs()}`,
        );
      });
      expect(done.status.capacity?.storage).toBe(String(capacityBytes));
      expect((await kexec("grow", "cat /data/before")).trim()).toBe("kept");
      const after = await dataSize("grow");
      expect(after).toBeGreaterThan(before + 50 * 2 ** 20);
      expect(await kexec("grow", "dd if=/dev/zero of=/data/big bs=1M count=40 2>&1; echo rc=$?")).toMatch(/rc=0/);
      await deletePod("grow");
      await kubectl(["-n", "bt", "delete", "pvc", "grow", "--wait=true", "--timeout=60s"], undefined, 70_000);
    } finally {
      csi.close();
    }
  }, 300_000);

  it("a VolumeSnapshot of a PVC is restored into a new PVC with the same data", async () => {
    const csi = nodeDriver();
    try {
      await kubectl(["apply", "-f", SNAPSHOT_CRDS]);
      await kubectl(["wait", "--for=condition=established", "--timeout=60s", "-f", SNAPSHOT_CRDS], undefined, 70_000);
      await kubectl(["apply", "-f", join(REPO, "deploy", "kubernetes", "snapshot")]);

      await kubectl(["apply", "-f", "-"], JSON.stringify(pvc("orig", "berth-block", "32Mi")));
      await startWithClaim("orig", "orig");
      const data = (await kexec("orig", "cat /proc/sys/kernel/random/uuid | tee /data/id; sync")).trim();
      expect(data).toMatch(/^[0-9a-f-]{36}$/);

      const vs = {
        apiVersion: "snapshot.storage.k8s.io/v1beta1",
        kind: "VolumeSnapshot",
        metadata: { name: "orig-snap", namespace: "bt" },
        spec: { volumeSnapshotClassName: "berth", source: { persistentVolumeClaimName: "orig" } },
      };
      await kubectl(["apply", "-f", "-"], JSON.stringify(vs));
      const snapshotId = await snapshotLikeCsiSnapshotter(csi, "bt", "orig-snap");
      // The snapshot's image on the node, read back from berth's state dir.
      const snapshotImages = () =>
        run0("find", [DIRS.state, "-name", `${snapshotId}.img`])
          .split("\n")
          .filter(Boolean);
      expect(snapshotImages()).toHaveLength(1);
      // Written after the snapshot: not in the restored volume.
      await kexec("orig", "echo later > /data/later && sync");

      const source = { apiGroup: "snapshot.storage.k8s.io", kind: "VolumeSnapshot", name: "orig-snap" };
      await kubectl(["apply", "-f", "-"], JSON.stringify(pvc("restored", "berth-block", "32Mi", source)));
      await startWithClaim("restored", "restored");
      expect((await kexec("restored", "cat /data/id")).trim()).toBe(data);
      expect(await kexec("restored", "ls /data")).not.toContain("later");
      const volumes = await Promise.all(["orig", "restored"].map(async (c) => (await claim("bt", c)).spec.volumeName));
      expect(volumes[1]).toBeTruthy();
      expect(volumes[1]).not.toBe(volumes[0]);

      for (const p of ["orig", "restored"]) await deletePod(p);
      await deleteSnapshotLikeCsiSnapshotter(csi, "bt", "orig-snap", snapshotId);
      const { entries } = await csi.controller.ListSnapshots({ snapshot_id: snapshotId });
      expect(entries).toEqual([]);
      expect(snapshotImages()).toEqual([]);
      await kubectl(["-n", "bt", "delete", "pvc", "orig", "restored", "--wait=true", "--timeout=60s"], undefined, 70_000);
    } finally {
      csi.close();
    }
  }, 300_000);

  // What csi-resizer v1.1 and csi-snapshotter v4.0 (deploy/kubernetes/addons/, under the
  // berth-csi ServiceAccount) call, as their own RBAC files (kubernetes-csi/external-resizer
  // and external-snapshotter, deploy/kubernetes/) grant it.
  const calls = (verbs: string[], resource: string) => verbs.map((verb) => `${verb} ${resource}`);
  const SIDECAR_CALLS = [
    ...calls(["get", "list", "watch", "patch"], "persistentvolumes"),
    ...calls(["get", "list", "watch"], "persistentvolumeclaims"),
    ...calls(["patch"], "persistentvolumeclaims/status"),
    ...calls(["get", "list", "watch"], "pods"),
    ...calls(["list", "watch", "create", "update", "patch"], "events"),
    ...calls(["get", "list", "watch"], "volumesnapshotclasses.snapshot.storage.k8s.io"),
    ...calls(["create", "get", "list", "watch", "update", "delete", "patch"], "volumesnapshotcontents.snapshot.storage.k8s.io"),
    ...calls(["update", "patch"], "volumesnapshotcontents.snapshot.storage.k8s.io/status"),
  ];

  it("RBAC: berth-csi's ServiceAccount may make the calls of csi-resizer and csi-snapshotter, and not more than it needs", async () => {
    const as = "--as=system:serviceaccount:berth-system:berth-csi";
    /** kubectl auth can-i for "verb resource[/subresource]": its answer's last line ("yes", "no"). */
    const canI = async (call: string) => {
      const [verb, resource] = call.split(" ");
      const [res, sub] = resource!.split("/");
      const args = ["auth", "can-i", verb!, res!, as, ...(sub ? [`--subresource=${sub}`] : [])];
      return (await kubectl(args).catch((e) => (e as Error).message)).trim().split("\n").at(-1);
    };
    const denied: string[] = [];
    for (const call of SIDECAR_CALLS) if ((await canI(call)) !== "yes") denied.push(call);
    expect(denied).toEqual([]);
    // Least privilege: no secrets, no deleting claims or nodes.
    for (const call of ["get secrets", "delete persistentvolumeclaims", "delete nodes"]) expect(await canI(call)).not.toBe("yes");
  }, 60_000);

  it("storage capacity: the provisioner publishes this node's free space per class, and a pod whose volume cannot fit is not scheduled", async () => {
    // deployBerth waited for them: one per class, each with a capacity.
    const caps = await storageCapacities();
    // berth's volumes live on the state dir's filesystem: what it reports is at most its size.
    const fsBytes = Number(
      run0("stat", ["-f", "-c", "%b*%S", DIRS.state])
        .trim()
        .split("*")
        .reduce((a, b) => a * Number(b), 1),
    );
    for (const c of STORAGE_CLASSES) {
      const cap = caps.find((i) => i.storageClassName === c)!;
      expect(cap.nodeTopology?.matchLabels?.["topology.berth/node"]).toBe(NODE);
      expect(cap.metadata.ownerReferences?.[0]).toMatchObject({ kind: "DaemonSet", name: "berth-csi" });
      const bytes = quantityBytes(cap.capacity!);
      expect(bytes).toBeGreaterThan(64 * 2 ** 20);
      expect(bytes).toBeLessThanOrEqual(fsBytes);
    }

    // A claim larger than the node's capacity: the scheduler keeps its pod Pending, for storage.
    const claim = {
      apiVersion: "v1",
      kind: "PersistentVolumeClaim",
      metadata: { name: "huge", namespace: "bt" },
      spec: { storageClassName: "berth-dir", accessModes: ["ReadWriteOnce"], resources: { requests: { storage: "900Ti" } } },
    };
    const plain = pod("huge");
    const consumer = {
      ...plain,
      spec: { ...plain.spec, volumes: [{ name: "v", persistentVolumeClaim: { claimName: "huge" } }] },
    };
    await kubectl(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "List", items: [claim, consumer] }));
    try {
      const reason = await until(
        "the huge pod's PodScheduled condition",
        async () =>
          (
            JSON.parse(await kubectl(["-n", "bt", "get", "pod", "huge", "-o", "json"])) as {
              status: { conditions?: { type: string; status: string; message?: string }[] };
            }
          ).status.conditions?.find((c) => c.type === "PodScheduled"),
        (c) => c?.status === "False" && /enough free storage/.test(c.message ?? ""),
        60_000,
        500,
      );
      expect(reason?.message).toMatch(/node\(s\) did not have enough free storage/);
      expect(JSON.parse(await kubectl(["-n", "bt", "get", "pvc", "huge", "-o", "json"])).status.phase).toBe("Pending");
    } finally {
      await kubectl(["-n", "bt", "delete", "pod/huge", "pvc/huge", "--wait=true", "--timeout=60s"], undefined, 70_000);
    }
  }, 240_000);

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
    expect(kit.berthLoops()).toEqual([]);
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
    for (const l of ["berth0", "berth.1"]) if (!kit.existedBefore(l)) expect(now).not.toContain(l);
    // The pods' host ends, seen on berth's bridge while they ran.
    expect(podLinks.length).toBeGreaterThan(0);
    expect(now.filter((l) => podLinks.includes(l))).toEqual([]);
    if (!kit.berthTableExistedBefore) expect(run0("nft", ["list", "table", "inet", "berth"])).toBe("");
    expect(kit.berthLoops()).toEqual([]);
    expect(mountsUnder(DIRS.state)).toEqual([]);
    expect(mountsUnder(join(WORK, "kubelet", "pods"))).toEqual([]);
    expect(readdirSync(join(WORK, "cni-bin")).filter((f) => f.startsWith("berth-"))).toEqual([]);
    expect(existsSync(join(WORK, "net.d", "10-berth.conflist"))).toBe(false);
    expect(readdirSync(DIRS.lib)).toEqual([]);
    expect(readdirSync(DIRS.state)).toEqual([]);
    await kubectl(["-n", "kube-system", "delete", "job", "berth-uninstall", "--wait=true"]);
  }, 600_000);
});
