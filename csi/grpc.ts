// gRPC wiring: every CSI RPC is a unary handler that runs a service method, turns a CsiError
// into its status (anything else into INTERNAL), logs and counts the call; the services and
// the capabilities they advertise are registered here.
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { ControllerService } from "./controller.ts";
import { CsiError } from "./errors.ts";
import type { GroupControllerService } from "./group-controller.ts";
import type { IdentityService } from "./identity.ts";
import type { RpcMetrics } from "./metrics.ts";
import type { NodeService } from "./node.ts";
import type { ControllerHandlers } from "./proto/generated/csi/v1/Controller.ts";
import type { _csi_v1_ControllerServiceCapability_RPC_Type as ControllerRpcType } from "./proto/generated/csi/v1/ControllerServiceCapability.ts";
import type { GroupControllerHandlers } from "./proto/generated/csi/v1/GroupController.ts";
import type { IdentityHandlers } from "./proto/generated/csi/v1/Identity.ts";
import type { NodeHandlers } from "./proto/generated/csi/v1/Node.ts";
import type { _csi_v1_NodeServiceCapability_RPC_Type as NodeRpcType } from "./proto/generated/csi/v1/NodeServiceCapability.ts";
import { loadCsiPackage } from "./proto/load.ts";

const NODE_CAPABILITIES: NodeRpcType[] = [
  "STAGE_UNSTAGE_VOLUME",
  "GET_VOLUME_STATS",
  "EXPAND_VOLUME",
  "VOLUME_CONDITION",
  "SINGLE_NODE_MULTI_WRITER",
];

/**
 * Controller capabilities that are alpha in spec 1.12 and that no released csi-sanity
 * (up to v5.4.0) or Kubernetes sidecar knows: a consumer that meets an unknown capability
 * fails, so these are advertised only with --enable-alpha-capabilities. The other
 * alpha-annotated ones (GET_VOLUME, VOLUME_CONDITION, SINGLE_NODE_MULTI_WRITER) have been
 * understood by kubelet and the sidecars for years (ReadWriteOncePod needs the last one), so
 * they are always advertised.
 */
export const ALPHA_CONTROLLER_CAPABILITIES: ControllerRpcType[] = ["GET_SNAPSHOT"];

const CONTROLLER_CAPABILITIES: ControllerRpcType[] = [
  "CREATE_DELETE_VOLUME",
  "LIST_VOLUMES",
  "GET_CAPACITY",
  "CREATE_DELETE_SNAPSHOT",
  "LIST_SNAPSHOTS",
  "CLONE_VOLUME",
  "EXPAND_VOLUME",
  "LIST_VOLUMES_PUBLISHED_NODES",
  "VOLUME_CONDITION",
  "GET_VOLUME",
  "SINGLE_NODE_MULTI_WRITER",
];

/**
 * A copy of a request safe to log: `secrets` (csi_secret fields) and mount_flags (which the
 * spec says may be sensitive) are replaced wherever they sit.
 */
export function redactRequest(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redactRequest);
  if (!value || typeof value !== "object") return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = k === "secrets" || k === "mount_flags" ? "[redacted]" : redactRequest(v);
  }
  return out;
}

type Handler<Req, Res> = (request: Req) => Promise<Res> | Res;

function wrap<Req, Res>(name: string, fn: Handler<Req, Res>, log: Logger, metrics: RpcMetrics): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const started = process.hrtime.bigint();
    const done = (code: grpc.status, err: string | null, reply?: Res) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics.observe(name, code, seconds);
      const entry = { method: name, status: grpc.status[code], ms: Math.round(seconds * 1000) };
      if (code === grpc.status.OK) {
        log.debug(entry, "rpc");
        callback(null, reply);
      } else {
        (code === grpc.status.INTERNAL ? log.error.bind(log) : log.info.bind(log))({ ...entry, error: err }, "rpc failed");
        callback({ code, details: err ?? "" });
      }
    };
    if (log.isLevelEnabled("trace")) log.trace({ method: name, request: redactRequest(call.request) }, "rpc start");
    Promise.resolve()
      .then(() => fn(call.request))
      .then(
        (reply) => done(grpc.status.OK, null, reply),
        (e: unknown) => {
          if (e instanceof CsiError) done(e.code, e.message);
          else done(grpc.status.INTERNAL, e instanceof Error ? e.message : String(e));
        },
      );
  };
}

export interface CsiServices {
  identity: IdentityService;
  /** With the group controller, when this process serves the controller side. */
  controller?: { controller: ControllerService; group: GroupControllerService };
  node?: NodeService;
}

/** A gRPC server with the given services registered on it. */
export function createCsiServer(
  services: CsiServices,
  options: { log: Logger; metrics: RpcMetrics; alphaCapabilities?: boolean },
): grpc.Server {
  const pkg = loadCsiPackage();
  const server = new grpc.Server();
  const w = <Req, Res>(name: string, fn: Handler<Req, Res>) => wrap(name, fn, options.log, options.metrics);
  const id = services.identity;
  const identity: IdentityHandlers = {
    GetPluginInfo: w("GetPluginInfo", () => id.pluginInfo()),
    GetPluginCapabilities: w("GetPluginCapabilities", () => id.pluginCapabilities()),
    Probe: w("Probe", () => id.probe()),
  };
  server.addService(pkg.csi.v1.Identity.service, identity);
  if (services.controller) {
    const { controller: c, group: g } = services.controller;
    const advertised = [...CONTROLLER_CAPABILITIES, ...(options.alphaCapabilities ? ALPHA_CONTROLLER_CAPABILITIES : [])];
    const handlers: Omit<ControllerHandlers, "ControllerPublishVolume" | "ControllerUnpublishVolume" | "ControllerModifyVolume"> =
      {
        CreateVolume: w("CreateVolume", (r) => c.createVolume(r)),
        DeleteVolume: w("DeleteVolume", (r) => c.deleteVolume(r)),
        ValidateVolumeCapabilities: w("ValidateVolumeCapabilities", (r) => c.validateVolumeCapabilities(r)),
        ListVolumes: w("ListVolumes", (r) => c.listVolumes(r)),
        GetCapacity: w("GetCapacity", (r) => c.getCapacity(r)),
        ControllerGetCapabilities: w("ControllerGetCapabilities", () => ({
          capabilities: advertised.map((type) => ({ rpc: { type } })),
        })),
        CreateSnapshot: w("CreateSnapshot", (r) => c.createSnapshot(r)),
        DeleteSnapshot: w("DeleteSnapshot", (r) => c.deleteSnapshot(r)),
        ListSnapshots: w("ListSnapshots", (r) => c.listSnapshots(r)),
        GetSnapshot: w("GetSnapshot", (r) => c.getSnapshot(r)),
        ControllerExpandVolume: w("ControllerExpandVolume", (r) => c.controllerExpandVolume(r)),
        ControllerGetVolume: w("ControllerGetVolume", (r) => c.controllerGetVolume(r)),
      };
    // Left out on purpose (not advertised): grpc-js answers UNIMPLEMENTED for them.
    server.addService(pkg.csi.v1.Controller.service, handlers as grpc.UntypedServiceImplementation);
    const groupHandlers: GroupControllerHandlers = {
      GroupControllerGetCapabilities: w("GroupControllerGetCapabilities", () => ({
        capabilities: [{ rpc: { type: "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT" } }],
      })),
      CreateVolumeGroupSnapshot: w("CreateVolumeGroupSnapshot", (r) => g.create(r)),
      DeleteVolumeGroupSnapshot: w("DeleteVolumeGroupSnapshot", (r) => g.delete(r)),
      GetVolumeGroupSnapshot: w("GetVolumeGroupSnapshot", (r) => g.get(r)),
    };
    server.addService(pkg.csi.v1.GroupController.service, groupHandlers);
  }
  if (services.node) {
    const n = services.node;
    const handlers: NodeHandlers = {
      NodeStageVolume: w("NodeStageVolume", (r) => n.stage(r)),
      NodeUnstageVolume: w("NodeUnstageVolume", (r) => n.unstage(r)),
      NodePublishVolume: w("NodePublishVolume", (r) => n.publish(r)),
      NodeUnpublishVolume: w("NodeUnpublishVolume", (r) => n.unpublish(r)),
      NodeGetVolumeStats: w("NodeGetVolumeStats", (r) => n.volumeStats(r)),
      NodeExpandVolume: w("NodeExpandVolume", (r) => n.expand(r)),
      NodeGetCapabilities: w("NodeGetCapabilities", () => ({
        capabilities: NODE_CAPABILITIES.map((type) => ({ rpc: { type } })),
      })),
      NodeGetInfo: w("NodeGetInfo", () => n.getInfo()),
    };
    server.addService(pkg.csi.v1.Node.service, handlers);
  }
  return server;
}
