// The CSI driver in one process: its directories and socket claimed, the state opened and
// repaired, the Identity, Controller (with GroupController) and Node services built for the
// mode and served on one gRPC unix socket (csi/grpc.ts, csi/socket.ts), metrics on HTTP when
// asked (csi/metrics.ts). The command line is csi/main.ts.
import { hostname } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Logger } from "pino";
import type { PassedListener } from "../native/listen-fds.ts";
import { createLogger } from "../native/log.ts";
import { BackingStore, canResizeExt4Online } from "./backing.ts";
import { ControllerService } from "./controller.ts";
import type { Driver } from "./driver.ts";
import { ConfigError } from "./errors.ts";
import { GroupControllerService } from "./group-controller.ts";
import { createCsiServer } from "./grpc.ts";
import { checkDriverName, type DriverMode, IdentityService } from "./identity.ts";
import { InFlight } from "./locks.ts";
import { type MetricsServer, RpcMetrics, serveMetrics } from "./metrics.ts";
import { NodeService } from "./node.ts";
import { DirectoryError, makeDirectories } from "./paths.ts";
import { releaseDataDir, shareDataDir } from "./propagation.ts";
import { reconcile } from "./reconcile.ts";
import { claimSocket, listen, socketPathOf } from "./socket.ts";
import { VolumeStore } from "./state.ts";

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
  /** Also advertise ALPHA_CONTROLLER_CAPABILITIES (csi/grpc.ts). */
  alphaCapabilities?: boolean;
  logger?: Logger;
}

export interface RunningCsiDriver {
  endpoint: string;
  /** Address of the metrics server when one was asked for (host:port). */
  metricsAddress?: string;
  close(): Promise<void>;
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

export async function startCsiDriver(options: CsiDriverOptions): Promise<RunningCsiDriver> {
  const log = options.logger ?? createLogger({ component: "berth-csi" });
  const driverName = options.driverName ?? "berth.csi.local";
  checkDriverName(driverName);
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
  const server = createCsiServer(
    {
      identity: new IdentityService(d, mode, expansion),
      controller: mode === "node" ? undefined : { controller, group: new GroupControllerService(d, controller) },
      node,
    },
    { log, metrics, alphaCapabilities: options.alphaCapabilities },
  );
  const listening = await listen(server, socketPath, passed);

  let http: MetricsServer | undefined;
  if (options.metricsListen) http = await serveMetrics(options.metricsListen, metrics);
  log.info(
    { endpoint: options.endpoint, passedAs: passed?.name, nodeId, driverName, mode, metrics: http?.address },
    "csi driver listening",
  );

  let closed = false;
  return {
    endpoint: options.endpoint,
    metricsAddress: http?.address,
    async close() {
      if (closed) return;
      closed = true;
      listening.stopAccepting();
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
      await http?.close();
      store.close();
      if (sharedBind) {
        try {
          releaseDataDir(backing.mountDir);
        } catch (e) {
          log.warn({ dir: backing.mountDir, err: (e as Error).message }, "could not undo the mounts dir's shared bind");
        }
      }
      listening.removeSocket();
    },
  };
}
