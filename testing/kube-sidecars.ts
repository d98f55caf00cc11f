// Stand-ins for the kubernetes-csi sidecars the kit does not build: csi-resizer, and
// csi-snapshotter with the snapshot controller (deploy/kubernetes/addons/ and snapshot/ deploy
// the real ones). Each makes, for one object, the CSI call and the API writes that sidecar
// makes, so that what Kubernetes does after it runs for real against berth: kubelet staging a
// resized volume and calling NodeExpandVolume, then recording the claim's new capacity;
// external-provisioner creating a volume from a VolumeSnapshot. Test code only: a cluster runs
// the sidecars.
import { join } from "node:path";
import type { VolumeCapability } from "../csi/proto/generated/csi/v1/VolumeCapability.ts";
import { type CsiClients, csiClients } from "./csi-test-driver.ts";
import { kubectl, quantityBytes, WORK } from "./kube.ts";

export const DRIVER = "berth.csi.local";
const SNAPSHOT_API = "snapshot.storage.k8s.io/v1beta1";

/** The CSI driver berth's DaemonSet serves on this node, at the socket kubelet dials. */
export function nodeDriver(): CsiClients {
  return csiClients(`unix://${join(WORK, "kubelet", "plugins", DRIVER, "csi.sock")}`);
}

interface Meta {
  name: string;
  namespace?: string;
  uid: string;
}
export interface Claim {
  metadata: Meta;
  spec: { volumeName?: string; resources: { requests: { storage: string } } };
  status: {
    phase?: string;
    capacity?: { storage: string };
    conditions?: { type: string; status: string; lastTransitionTime?: string; message?: string }[];
  };
}
interface Volume {
  metadata: Meta;
  spec: {
    capacity: { storage: string };
    accessModes: string[];
    volumeMode?: string;
    csi?: { driver: string; volumeHandle: string; fsType?: string };
  };
}

async function getJson<T>(args: string[]): Promise<T> {
  return JSON.parse(await kubectl([...args, "-o", "json"])) as T;
}

/** Replaces an object's status through its status subresource (kubectl 1.20 has no --subresource). */
async function putStatus(path: string, obj: object): Promise<void> {
  await kubectl(["replace", "--raw", `${path}/status`, "-f", "-"], JSON.stringify(obj));
}

export const claim = (ns: string, name: string) => getJson<Claim>(["-n", ns, "get", "pvc", name]);

/** The claim's bound PV, which must be one of berth's. */
async function berthVolumeOf(ns: string, name: string): Promise<Volume & { spec: { csi: { volumeHandle: string } } }> {
  const pvc = await claim(ns, name);
  if (!pvc.spec.volumeName) throw new Error(`claim ${ns}/${name} is not bound`);
  const pv = await getJson<Volume>(["get", "pv", pvc.spec.volumeName]);
  if (pv.spec.csi?.driver !== DRIVER) throw new Error(`PV ${pv.metadata.name} is not ${DRIVER}'s`);
  return pv as Volume & { spec: { csi: { volumeHandle: string } } };
}

/** The capability the sidecars derive from a PV (access mode from its access modes). */
function capabilityOf(pv: Volume): VolumeCapability {
  const modes = pv.spec.accessModes;
  const mode = modes.includes("ReadWriteMany")
    ? "MULTI_NODE_MULTI_WRITER"
    : modes.includes("ReadOnlyMany")
      ? "MULTI_NODE_READER_ONLY"
      : "SINGLE_NODE_WRITER";
  return pv.spec.volumeMode === "Block"
    ? { block: {}, access_mode: { mode } }
    : { mount: { fs_type: pv.spec.csi?.fsType ?? "", mount_flags: [] }, access_mode: { mode } };
}

/**
 * csi-resizer's work for a claim whose request grew: ControllerExpandVolume to the request, the
 * PV's capacity set to what the driver answered, and on the claim either the
 * FileSystemResizePending condition (the driver asks for node expansion: kubelet finishes at the
 * volume's next stage or while it is mounted) or the new capacity.
 */
export async function expandLikeCsiResizer(
  csi: CsiClients,
  ns: string,
  name: string,
): Promise<{ capacityBytes: number; nodeExpansionRequired: boolean }> {
  const pv = await berthVolumeOf(ns, name);
  const requested = quantityBytes((await claim(ns, name)).spec.resources.requests.storage);
  const res = await csi.controller.ControllerExpandVolume({
    volume_id: pv.spec.csi.volumeHandle,
    capacity_range: { required_bytes: String(requested) },
    volume_capability: capabilityOf(pv),
  });
  const size = String(res.capacity_bytes);
  await kubectl([
    "patch",
    "pv",
    pv.metadata.name,
    "--type=merge",
    "-p",
    JSON.stringify({ spec: { capacity: { storage: size } } }),
  ]);
  const pvc = await claim(ns, name);
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  pvc.status = res.node_expansion_required
    ? {
        ...pvc.status,
        conditions: [
          {
            type: "FileSystemResizePending",
            status: "True",
            lastTransitionTime: now,
            message: "Waiting for user to (re-)start a pod to finish file system resize of volume on node.",
          },
        ],
      }
    : { ...pvc.status, capacity: { storage: size }, conditions: [] };
  await putStatus(`/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`, pvc);
  return { capacityBytes: Number(res.capacity_bytes), nodeExpansionRequired: res.node_expansion_required };
}

interface VolumeSnapshot {
  metadata: Meta;
  spec: { source: { persistentVolumeClaimName?: string }; volumeSnapshotClassName: string };
  status?: Record<string, unknown>;
}

/**
 * The snapshot controller's and csi-snapshotter's work for a new VolumeSnapshot of a claim:
 * CreateSnapshot of the claim's volume (named, as theirs, after the VolumeSnapshot's UID), the
 * VolumeSnapshotContent bound to it, and both objects' status. Returns the CSI snapshot id.
 */
export async function snapshotLikeCsiSnapshotter(csi: CsiClients, ns: string, name: string): Promise<string> {
  const vs = await getJson<VolumeSnapshot>(["-n", ns, "get", "volumesnapshots.v1beta1.snapshot.storage.k8s.io", name]);
  const source = vs.spec.source.persistentVolumeClaimName;
  if (!source) throw new Error(`VolumeSnapshot ${ns}/${name} has no claim as its source`);
  const pv = await berthVolumeOf(ns, source);
  const cls = await getJson<{ metadata: Meta; deletionPolicy: string; parameters?: Record<string, string> }>([
    "get",
    "volumesnapshotclasses.v1beta1.snapshot.storage.k8s.io",
    vs.spec.volumeSnapshotClassName,
  ]);
  const { snapshot } = await csi.controller.CreateSnapshot({
    source_volume_id: pv.spec.csi.volumeHandle,
    name: `snapshot-${vs.metadata.uid}`,
    parameters: cls.parameters ?? {},
  });
  const contentName = `snapcontent-${vs.metadata.uid}`;
  await kubectl(
    ["create", "-f", "-"],
    JSON.stringify({
      apiVersion: SNAPSHOT_API,
      kind: "VolumeSnapshotContent",
      metadata: { name: contentName },
      spec: {
        volumeSnapshotRef: { apiVersion: SNAPSHOT_API, kind: "VolumeSnapshot", namespace: ns, name, uid: vs.metadata.uid },
        source: { volumeHandle: pv.spec.csi.volumeHandle },
        driver: DRIVER,
        deletionPolicy: cls.deletionPolicy,
        volumeSnapshotClassName: cls.metadata.name,
      },
    }),
  );
  const created = Number(snapshot.creation_time.seconds) * 1e3 + Math.floor(snapshot.creation_time.nanos / 1e6);
  const content = await getJson<Record<string, unknown>>([
    "get",
    "volumesnapshotcontents.v1beta1.snapshot.storage.k8s.io",
    contentName,
  ]);
  content.status = {
    snapshotHandle: snapshot.snapshot_id,
    creationTime: created * 1e6,
    readyToUse: snapshot.ready_to_use,
    restoreSize: Number(snapshot.size_bytes),
  };
  await putStatus(`/apis/${SNAPSHOT_API}/volumesnapshotcontents/${contentName}`, content);
  const bound = await getJson<VolumeSnapshot>(["-n", ns, "get", "volumesnapshots.v1beta1.snapshot.storage.k8s.io", name]);
  bound.status = {
    boundVolumeSnapshotContentName: contentName,
    creationTime: new Date(created).toISOString().replace(/\.\d+Z$/, "Z"),
    readyToUse: snapshot.ready_to_use,
    restoreSize: String(snapshot.size_bytes),
  };
  await putStatus(`/apis/${SNAPSHOT_API}/namespaces/${ns}/volumesnapshots/${name}`, bound);
  return snapshot.snapshot_id;
}

/** The controllers' work when a VolumeSnapshot of a Delete class goes: DeleteSnapshot, then both objects. */
export async function deleteSnapshotLikeCsiSnapshotter(
  csi: CsiClients,
  ns: string,
  name: string,
  snapshotId: string,
): Promise<void> {
  await csi.controller.DeleteSnapshot({ snapshot_id: snapshotId });
  const vs = await getJson<VolumeSnapshot>(["-n", ns, "get", "volumesnapshots.v1beta1.snapshot.storage.k8s.io", name]);
  const content = (vs.status?.boundVolumeSnapshotContentName as string | undefined) ?? "";
  await kubectl(["-n", ns, "delete", "volumesnapshots.v1beta1.snapshot.storage.k8s.io", name]);
  if (content) await kubectl(["delete", "volumesnapshotcontents.v1beta1.snapshot.storage.k8s.io", content]);
}
