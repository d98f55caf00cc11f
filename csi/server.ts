// `berth csi`: Identity, Controller and Node services on one gRPC unix socket.
import { chmodSync, unlinkSync } from "node:fs";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createServer as createNetServer, type Server as NetServer } from "node:net";
import { hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { Counter, Histogram, Registry } from "prom-client";
import { ListenFdsError, type PassedListener, takeListener } from "../native/listen-fds.ts";
import { createLogger, LogFormatError, resolveLogFormat } from "../native/log.ts";
import { waitForStopSignal } from "../native/signals.ts";
import { claimSocketPath, SocketClaimError } from "../native/unix-socket.ts";
import { BERTH_VERSION } from "../native/version.ts";
import { BackingStore, canResizeExt4Online } from "./backing.ts";
import { ControllerService } from "./controller.ts";
import type { Driver } from "./driver.ts";
import { CsiError } from "./errors.ts";
import { GroupControllerService } from "./group-controller.ts";
import { InFlight } from "./locks.ts";
import { NodeService } from "./node.ts";
import { DirectoryError, makeDirectories } from "./paths.ts";
import { releaseDataDir, shareDataDir } from "./propagation.ts";
import type { ControllerHandlers } from "./proto/generated/csi/v1/Controller.ts";
import type { _csi_v1_ControllerServiceCapability_RPC_Type as ControllerRpcType } from "./proto/generated/csi/v1/ControllerServiceCapability.ts";
import type { GroupControllerHandlers } from "./proto/generated/csi/v1/GroupController.ts";
import type { IdentityHandlers } from "./proto/generated/csi/v1/Identity.ts";
import type { NodeHandlers } from "./proto/generated/csi/v1/Node.ts";
import type { _csi_v1_NodeServiceCapability_RPC_Type as NodeRpcType } from "./proto/generated/csi/v1/NodeServiceCapability.ts";
import { loadCsiPackage } from "./proto/load.ts";
import { reconcile } from "./reconcile.ts";
import { VolumeStore } from "./state.ts";

/** The version GetPluginInfo reports: berth's own. */
export const VENDOR_VERSION = BERTH_VERSION;
const DNS_LIKE = /^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$/;

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

export type DriverMode = "controller" | "node" | "both";

export interface CsiDriverOptions {
  endpoint: string;
  nodeId?: string;
  driverName?: string;
  dataDir?: string;
  stateDir?: string;
  mode?: DriverMode;
  metricsListen?: string;
  maxVolumesPerNode?: number;
  /**
   * A listening socket a service manager passed (native/listen-fds.ts): served instead of
   * binding the endpoint's path, whose file then belongs to the service manager.
   */
  passed?: PassedListener;
  /** Also advertise ALPHA_CONTROLLER_CAPABILITIES. */
  alphaCapabilities?: boolean;
  logger?: Logger;
}

export interface RunningCsiDriver {
  endpoint: string;
  /** Address of the metrics server when one was asked for (host:port). */
  metricsAddress?: string;
  close(): Promise<void>;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** unix:///abs/path.sock → /abs/path.sock */
export function socketPathOf(endpoint: string): string {
  const m = /^unix:\/\/(\/.+)$/.exec(endpoint) ?? /^unix:(\/.+)$/.exec(endpoint);
  if (!m?.[1]) throw new ConfigError(`endpoint must look like unix:///path/csi.sock, got ${JSON.stringify(endpoint)}`);
  return m[1];
}

/** Creates a directory the operator configured (bounded, see paths.ts); a failure is a ConfigError. */
function makeConfiguredDirectory(what: string, path: string, mode: number): void {
  try {
    makeDirectories(path, mode);
  } catch (e) {
    if (e instanceof DirectoryError) throw new ConfigError(`${what}: ${e.message}`);
    throw e;
  }
}

/** Claims the socket path (claimSocketPath); a path taken is a ConfigError. */
async function claimSocket(path: string): Promise<void> {
  try {
    await claimSocketPath(path, "CSI driver");
  } catch (e) {
    if (e instanceof SocketClaimError) throw new ConfigError(e.message);
    throw e;
  }
}

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

class RpcMetrics {
  readonly registry = new Registry();
  private readonly count = new Counter({
    name: "berth_csi_operations_total",
    help: "CSI RPCs handled, by method and gRPC status",
    labelNames: ["method", "status"],
    registers: [this.registry],
  });
  private readonly latency = new Histogram({
    name: "berth_csi_operation_seconds",
    help: "CSI RPC latency, by method and gRPC status",
    labelNames: ["method", "status"],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    registers: [this.registry],
  });

  observe(method: string, code: grpc.status, seconds: number): void {
    const labels = { method, status: grpc.status[code] ?? String(code) };
    this.count.inc(labels);
    this.latency.observe(labels, seconds);
  }
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

export async function startCsiDriver(options: CsiDriverOptions): Promise<RunningCsiDriver> {
  const log = options.logger ?? createLogger({ component: "berth-csi" });
  const driverName = options.driverName ?? "berth.csi.local";
  if (driverName.length > 63 || !DNS_LIKE.test(driverName)) {
    throw new ConfigError(
      `driver name ${JSON.stringify(driverName)} must be at most 63 characters, alphanumeric at both ends, with - and . between`,
    );
  }
  const nodeId = options.nodeId ?? hostname();
  if (!nodeId || Buffer.byteLength(nodeId) > 256) throw new ConfigError("node id must be 1-256 bytes");
  const mode = options.mode ?? "both";
  if (!["controller", "node", "both"].includes(mode)) throw new ConfigError(`mode must be controller, node or both, got ${mode}`);
  const passed = options.passed;
  const socketPath = passed ? passed.path : socketPathOf(options.endpoint);
  const dataDir = resolve(options.dataDir ?? "/var/lib/berth/csi/volumes");
  const stateDir = resolve(options.stateDir ?? "/var/lib/berth/csi");
  makeConfiguredDirectory("state dir", stateDir, 0o700);
  makeConfiguredDirectory("data dir", dataDir, 0o700);
  if (!passed) {
    makeConfiguredDirectory("socket dir", dirname(socketPath), 0o755);
    await claimSocket(socketPath);
  }

  const store = new VolumeStore(join(stateDir, "csi.db"));
  const backing = new BackingStore(dataDir);
  // Volumes' filesystems are mounted below the data dir's mounts dir: it is made an rshared
  // mount first (csi/propagation.ts). Only that dir: the images below the data dir are loop
  // devices' backing files, which are best left on the filesystem's own mount.
  let sharedBind = false;
  try {
    const shared = shareDataDir(backing.mountDir);
    sharedBind = shared.bound;
    if (shared.skipped) log.warn({ dir: backing.mountDir }, `mounts dir not made shared: ${shared.skipped}`);
  } catch (e) {
    log.warn(
      { dir: backing.mountDir, err: (e as Error).message },
      "mounts dir not made shared: other mount namespaces keep copies of volume mounts",
    );
  }
  const { enforcement, reason } = backing.detectEnforcement();
  log.info({ enforcement, reason, dataDir }, "capacity of dir volumes is enforced by a loop-mounted filesystem per volume");
  const d: Driver = {
    store,
    backing,
    locks: new InFlight(),
    nodeId,
    driverName,
    log,
    enforcement,
    maxVolumesPerNode: options.maxVolumesPerNode ?? 0,
  };
  const controller = new ControllerService(d);
  const node = mode === "controller" ? undefined : new NodeService(d);
  const report = await reconcile(d, node);
  if (report.removed.length + report.repaired.length + report.abnormal.length > 0) log.warn(report, "reconciled state on start");

  // ext4 (every dir volume) can grow online only with CAP_SYS_RESOURCE; without it the CO
  // must expand offline, and the filesystem grows at the next NodeStageVolume.
  const expansion = canResizeExt4Online() ? "ONLINE" : "OFFLINE";
  if (expansion === "OFFLINE")
    log.warn("no CAP_SYS_RESOURCE: ext4 cannot grow while mounted; advertising OFFLINE volume expansion");
  const metrics = new RpcMetrics();
  const pkg = loadCsiPackage();
  const server = new grpc.Server();
  const w = <Req, Res>(name: string, fn: Handler<Req, Res>) => wrap(name, fn, log, metrics);
  const identity: IdentityHandlers = {
    GetPluginInfo: w("GetPluginInfo", () => ({
      name: driverName,
      vendor_version: VENDOR_VERSION,
      manifest: { "capacity-enforcement": enforcement, "volume-expansion": expansion, mode },
    })),
    GetPluginCapabilities: w("GetPluginCapabilities", () => ({
      capabilities: [
        { service: { type: "CONTROLLER_SERVICE" } },
        { service: { type: "VOLUME_ACCESSIBILITY_CONSTRAINTS" } },
        ...(mode === "node" ? [] : [{ service: { type: "GROUP_CONTROLLER_SERVICE" as const } }]),
        { volume_expansion: { type: expansion } },
      ],
    })),
    Probe: w("Probe", () => {
      store.volume("vol-probe"); // the database answers
      return { ready: { value: true } };
    }),
  };
  server.addService(pkg.csi.v1.Identity.service, identity);
  if (mode !== "node") {
    const c = controller;
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
    const g = new GroupControllerService(d, controller);
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
  if (node) {
    const n = node;
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

  // A passed socket cannot be bound by grpc-js: a net.Server accepts on it and hands each
  // connection to the gRPC server through a connection injector.
  let accepting: NetServer | undefined;
  if (passed) {
    const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    const netServer = createNetServer((conn) => injector.injectConnection(conn));
    accepting = netServer;
    await new Promise<void>((resolve, reject) => {
      netServer.once("error", reject);
      netServer.listen({ fd: passed.fd }, () => {
        netServer.off("error", reject);
        resolve();
      });
    });
  } else {
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    chmodSync(socketPath, 0o660);
  }

  let http: HttpServer | undefined;
  let metricsAddress: string | undefined;
  if (options.metricsListen) {
    const m = /^(.+):(\d+)$/.exec(options.metricsListen);
    if (!m) throw new ConfigError(`--metrics-listen must be host:port, got ${options.metricsListen}`);
    http = createHttpServer((req, res) => {
      if (req.url !== "/metrics") {
        res.writeHead(404).end();
        return;
      }
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
        () => res.writeHead(500).end(),
      );
    });
    const h = http;
    await new Promise<void>((resolve, reject) => {
      h.once("error", reject);
      h.listen(Number(m[2]), m[1]!.replace(/^\[|\]$/g, ""), () => resolve());
    });
    const a = h.address();
    metricsAddress = typeof a === "object" && a ? `${a.address}:${a.port}` : options.metricsListen;
  }
  log.info(
    { endpoint: options.endpoint, passedAs: passed?.name, nodeId, driverName, mode, metrics: metricsAddress },
    "csi driver listening",
  );

  let closed = false;
  return {
    endpoint: options.endpoint,
    metricsAddress,
    async close() {
      if (closed) return;
      closed = true;
      accepting?.close();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 5000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      if (http) await new Promise<void>((resolve) => http.close(() => resolve()));
      store.close();
      if (sharedBind) {
        try {
          releaseDataDir(backing.mountDir);
        } catch (e) {
          log.warn({ dir: backing.mountDir, err: (e as Error).message }, "could not undo the mounts dir's shared bind");
        }
      }
      if (passed) return; // the socket file is the service manager's
      try {
        unlinkSync(socketPath);
      } catch {
        // already gone
      }
    },
  };
}

const USAGE = `usage: berth csi [--endpoint unix:///path/csi.sock] [--node-id ID] [--driver-name NAME]
                 [--data-dir DIR] [--state-dir DIR] [--mode controller|node|both]
                 [--metrics-listen HOST:PORT] [--enable-alpha-capabilities] [--log-format json|text]

  --endpoint URL          the gRPC socket (default $CSI_ENDPOINT; a socket passed by a service
                          manager as "csi" is served instead)
  --node-id ID            this node's id in NodeGetInfo and topology (default: the host name)
  --driver-name NAME      the driver's name in GetPluginInfo (default berth.csi.local)
  --data-dir DIR          volume files and directories (default /var/lib/berth/csi/volumes)
  --state-dir DIR         the volume database csi.db (default /var/lib/berth/csi)
  --mode MODE             controller, node or both services (default both)
  --metrics-listen HOST:PORT  serve Prometheus metrics over HTTP at /metrics
  --enable-alpha-capabilities  also advertise alpha controller capabilities (GET_SNAPSHOT)
  --log-format FORMAT     json or text log lines (default: text on a terminal, else JSON)`;

/** `berth csi ...`: runs until SIGINT/SIGTERM; returns the exit code. */
export async function runCsiCommand(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        endpoint: { type: "string" },
        "node-id": { type: "string" },
        "driver-name": { type: "string" },
        "data-dir": { type: "string" },
        "state-dir": { type: "string" },
        mode: { type: "string" },
        "metrics-listen": { type: "string" },
        "enable-alpha-capabilities": { type: "boolean" },
        "log-format": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`berth csi: ${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  let logger: Logger;
  try {
    logger = createLogger({ component: "berth-csi", format: resolveLogFormat(values["log-format"] as string | undefined) });
  } catch (e) {
    if (!(e instanceof LogFormatError)) throw e;
    process.stderr.write(`berth csi: ${e.message}\n${USAGE}\n`);
    return 2;
  }
  // Socket activation: a socket passed as "csi" (or a single unnamed one) is served instead.
  let passed: PassedListener | undefined;
  try {
    passed = takeListener("csi", { soleUnnamed: true });
  } catch (e) {
    if (!(e instanceof ListenFdsError)) throw e;
    process.stderr.write(`berth csi: ${e.message}\n`);
    return 2;
  }
  const endpoint =
    (values.endpoint as string | undefined) ??
    process.env.CSI_ENDPOINT ??
    (passed ? `unix://${passed.path || `(descriptor ${passed.fd})`}` : undefined);
  if (!endpoint) {
    process.stderr.write(`berth csi: --endpoint or CSI_ENDPOINT is required\n${USAGE}\n`);
    return 2;
  }
  let driver: RunningCsiDriver;
  try {
    driver = await startCsiDriver({
      passed,
      endpoint,
      logger,
      nodeId: values["node-id"] as string | undefined,
      driverName: values["driver-name"] as string | undefined,
      dataDir: values["data-dir"] as string | undefined,
      stateDir: values["state-dir"] as string | undefined,
      mode: values.mode as DriverMode | undefined,
      metricsListen: values["metrics-listen"] as string | undefined,
      alphaCapabilities: values["enable-alpha-capabilities"] === true,
    });
  } catch (e) {
    process.stderr.write(`berth csi: ${(e as Error).message}\n`);
    return e instanceof ConfigError ? 2 : 1;
  }
  const signal = await waitForStopSignal();
  logger.info({ signal }, "shutting down");
  await driver.close();
  return 0;
}
