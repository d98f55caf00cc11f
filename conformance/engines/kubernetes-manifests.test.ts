// deploy/kubernetes/ passes the Kubernetes API server's own validation (`kubectl apply
// --dry-run=server`), the fast check of the manifests without a node: a real kube-apiserver
// (the version the kit builds, v1.20) on etcd, nothing else. Every object of the base directory
// and of the uninstall Job is accepted as written, and the fields berth depends on survive
// the server's defaulting (a field an API version does not know is dropped silently).
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, KUBE_BIN, kubeBinariesPresent } from "../../testing/cluster.ts";

const REPO = join(import.meta.dirname, "..", "..");
const MANIFESTS = join(REPO, "deploy", "kubernetes");

const present = kubeBinariesPresent();
if (!present && process.env.CI) throw new Error(`kube-apiserver/kubectl not found in ${KUBE_BIN} (BERTH_KUBE_BIN)`);

interface Obj {
  kind: string;
  metadata: { name: string };
  spec?: Record<string, unknown>;
}

describe.skipIf(!present).sequential("deploy/kubernetes on the API server (dry run)", () => {
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    // The kube store's cluster: etcd and kube-apiserver in a namespace, no hosts.
    cluster = await Cluster.create({ store: "kube" }, (c) => {
      cluster = c;
    });
  }, 120_000);

  afterAll(async () => {
    await cluster?.destroy();
  });

  const dryRun = async (...paths: string[]): Promise<Obj[]> => {
    const out = await cluster!.kube!.kubectl(["apply", "--dry-run=server", "-o", "json", ...paths.flatMap((p) => ["-f", p])]);
    const doc = JSON.parse(out) as Obj | { kind: "List"; items: Obj[] };
    return "items" in doc ? doc.items : [doc];
  };

  it("the base directory is accepted whole, every object of it", async () => {
    const objs = await dryRun(MANIFESTS);
    const names = objs.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    expect(names).toEqual(
      [
        "CSIDriver/berth.csi.local",
        "ClusterRole/berth-csi",
        "ClusterRole/berth-network",
        "ClusterRoleBinding/berth-csi",
        "ClusterRoleBinding/berth-network",
        "DaemonSet/berth-csi",
        "DaemonSet/berth-network",
        "Namespace/berth-system",
        "Role/berth-csi",
        "RoleBinding/berth-csi",
        "ServiceAccount/berth-csi",
        "ServiceAccount/berth-install",
        "ServiceAccount/berth-network",
        "StorageClass/berth-block",
        "StorageClass/berth-dir",
      ].sort(),
    );
    const driver = objs.find((o) => o.kind === "CSIDriver")!;
    expect(driver.spec).toMatchObject({
      attachRequired: false,
      podInfoOnMount: true,
      volumeLifecycleModes: ["Persistent", "Ephemeral"],
    });
    // storageCapacity is alpha in v1.20 (the CSIStorageCapacity gate, off by default): the
    // server drops it there and keeps it where the gate is on (beta from v1.21).
    expect([true, undefined]).toContain(driver.spec?.storageCapacity);
    for (const sc of objs.filter((o) => o.kind === "StorageClass") as unknown as Record<string, unknown>[]) {
      expect(sc).toMatchObject({
        volumeBindingMode: "WaitForFirstConsumer",
        allowVolumeExpansion: true,
        reclaimPolicy: "Delete",
      });
    }
  });

  it("the uninstall Job and the add-ons without CRDs are accepted", async () => {
    const objs = await dryRun(join(MANIFESTS, "uninstall"), join(MANIFESTS, "addons"));
    expect(objs.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual(["DaemonSet/berth-csi-addons", "Job/berth-uninstall"]);
  });
});
