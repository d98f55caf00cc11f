// berth-overlay: attaches a pod to this host's part of the VXLAN overlay. The agent leases
// the host subnet and writes <runDir>/overlay.json; this plugin turns that into a berth-bridge
// config (gateway on the bridge, berth-host-local addresses from the host subnet, routes to
// the cluster networks, the overlay MTU) and runs berth-bridge in-process. Unlike flannel,
// readiness is explicit: STATUS answers 50 and ADD 11 (try again later) until the agent holds
// a lease, instead of failing with "subnet.env: no such file".
import { rmSync } from "node:fs";
import { join } from "node:path";
import { bridgePlugin } from "../../cni/plugins/bridge/bridge.ts";
import { makeDirectory, readSmallFile } from "../../cni/protocol/files.ts";
import { configSchema, field, validateConfig } from "../../cni/protocol/schema.ts";
import { CniError, ErrorCode, type NetConf, type Plugin, type Request, type Result } from "../../cni/protocol/types.ts";
import { writeFileAtomic } from "../atomic-file.ts";
import { OverlayNotReadyError, type OverlayRuntime, readOverlayRuntime } from "../runtime-file.ts";

export const DEFAULT_RUN_DIR = "/run/berth";
export const DEFAULT_DATA_DIR = "/var/lib/berth/overlay";

const schema = configSchema({
  runDir: field
    .string({ pattern: /^\//, patternName: "an absolute path" })
    .default(DEFAULT_RUN_DIR)
    .describe("The agent's run directory, where it writes this host's lease (overlay.json); same as berth agent --run-dir."),
  dataDir: field
    .string({ pattern: /^\/(?!.*(^|\/)\.\.(\/|$))/, patternName: "an absolute path without '..'" })
    .default(DEFAULT_DATA_DIR)
    .describe("Where attachments are recorded and the IPAM leases (dataDir/ipam) are kept."),
  bridge: field
    .string({ pattern: /^[A-Za-z0-9_.-]{1,15}$/, patternName: "an interface name" })
    .default("berth0")
    .describe("The host bridge pods attach to; it gets the gateway of the host's subnet."),
  ipMasq: field.boolean().default(false).describe("Masquerade pod traffic leaving the pod subnet (as berth-bridge's ipMasq)."),
  isDefaultGateway: field
    .boolean()
    .default(false)
    .describe(
      "Give pods a default route via the bridge (as berth-bridge's isDefaultGateway, flannel's bridge): pods then reach " +
        "the host's own addresses (a Kubernetes node's IP, hostPort replies, the API server) and beyond, not only the cluster networks.",
    ),
  nftTable: field
    .string({ pattern: /^[A-Za-z][A-Za-z0-9_]{0,31}$/, patternName: "an nftables identifier" })
    .describe("The nftables table for masquerade rules (default: berth-bridge's, berth)."),
});

function readRuntime(runDir: string, command: string): OverlayRuntime {
  try {
    return readOverlayRuntime(runDir);
  } catch (e) {
    if (e instanceof OverlayNotReadyError) {
      const code = command === "STATUS" ? ErrorCode.PluginNotAvailable : ErrorCode.TryAgainLater;
      throw new CniError(code, `overlay not ready: ${e.message}`);
    }
    throw e;
  }
}

/** The berth-bridge config this host's lease implies. */
export function bridgeConfigFor(req: Request, runtime: OverlayRuntime): NetConf {
  const conf = validateConfig(req.config, schema);
  return {
    cniVersion: req.config.cniVersion,
    name: req.config.name,
    type: "berth-bridge",
    bridge: conf.bridge,
    isGateway: true,
    ...(conf.isDefaultGateway ? { isDefaultGateway: true } : {}),
    ipMasq: conf.ipMasq,
    ...(conf.nftTable ? { nftTable: conf.nftTable } : {}),
    ...(runtime.mtu ? { mtu: runtime.mtu } : {}),
    ipam: {
      type: "berth-host-local",
      dataDir: join(conf.dataDir, "ipam"),
      ranges: runtime.subnets.map((subnet) => [{ subnet }]),
      routes: runtime.networks.map((dst) => ({ dst })),
    },
    ...(req.config.runtimeConfig ? { runtimeConfig: req.config.runtimeConfig } : {}),
    ...(req.config.args ? { args: req.config.args } : {}),
    ...(req.config.prevResult ? { prevResult: req.config.prevResult } : {}),
    ...(req.config["cni.dev/valid-attachments"] ? { "cni.dev/valid-attachments": req.config["cni.dev/valid-attachments"] } : {}),
    ...(req.config["cni.dev/attachments"] ? { "cni.dev/attachments": req.config["cni.dev/attachments"] } : {}),
  };
}

/** Where ADD saves the bridge config, so DEL works after the agent (or its lease) is gone. */
function savedConfigPath(req: Request): string {
  const conf = validateConfig(req.config, schema);
  return join(conf.dataDir, "attachments", `${req.config.name}-${req.containerId}-${req.ifname}.json`);
}

function withConfig(req: Request, config: NetConf): Request {
  return { ...req, config, stdin: Buffer.from(JSON.stringify(config)) };
}

async function add(req: Request): Promise<Result> {
  const conf = validateConfig(req.config, schema);
  const runtime = readRuntime(conf.runDir, "ADD");
  const config = bridgeConfigFor(req, runtime);
  const path = savedConfigPath(req);
  try {
    makeDirectory(join(conf.dataDir, "attachments"));
    writeFileAtomic(path, JSON.stringify({ ...config, prevResult: undefined }), 0o600);
  } catch (e) {
    throw new CniError(ErrorCode.IoFailure, `cannot record attachment in ${path}: ${(e as Error).message}`);
  }
  try {
    return await bridgePlugin.add(withConfig(req, config));
  } catch (e) {
    rmSync(path, { force: true });
    throw e;
  }
}

/** What add() saves: a berth-bridge config of this network; a file without this shape is no record. */
const savedSchema = configSchema({
  type: field.string({ oneOf: ["berth-bridge"] }).require(),
  name: field.string().require(),
  bridge: field.string({ pattern: /^[A-Za-z0-9_.-]{1,15}$/, patternName: "an interface name" }).require(),
  ipam: field
    .object({
      type: field.string({ oneOf: ["berth-host-local"] }).require(),
      dataDir: field.string({ pattern: /^\/(?!.*(^|\/)\.\.(\/|$))/, patternName: "an absolute path without '..'" }).require(),
      ranges: field.array(field.array(field.anyObject())).require(),
      routes: field.array(field.anyObject()),
    })
    .require(),
});

/** A saved config is a few KiB. */
const SAVED_CONFIG_MAX_BYTES = 256 * 1024;

function readSavedConfig(req: Request): NetConf | null {
  try {
    const saved: unknown = JSON.parse(readSmallFile(savedConfigPath(req), SAVED_CONFIG_MAX_BYTES));
    if (typeof saved !== "object" || saved === null || Array.isArray(saved)) return null;
    const conf = validateConfig(saved as Record<string, unknown>, savedSchema);
    return conf.name === req.config.name ? (saved as NetConf) : null;
  } catch {
    return null; // missing, unreadable or not of the shape add() writes
  }
}

/** The config to tear down with: the one ADD saved, else today's lease. */
function teardownConfig(req: Request): NetConf | null {
  const saved = readSavedConfig(req);
  if (saved) return { ...saved, prevResult: req.config.prevResult, cniVersion: req.config.cniVersion };
  const conf = validateConfig(req.config, schema);
  try {
    return bridgeConfigFor(req, readOverlayRuntime(conf.runDir));
  } catch {
    return null;
  }
}

/** No lease known: DEL needs no ranges, only the bridge and the lease database of this config. */
const NO_LEASE: OverlayRuntime = { ready: false, networks: [], subnets: [], gateways: [], vni: 0, device: "", updatedAt: "" };

async function del(req: Request): Promise<void> {
  // Without a record or a lease, DEL still frees what berth's own names lead to.
  const config = teardownConfig(req) ?? bridgeConfigFor(req, NO_LEASE);
  await bridgePlugin.del(withConfig(req, config));
  rmSync(savedConfigPath(req), { force: true });
}

async function check(req: Request): Promise<void> {
  const config = teardownConfig(req);
  if (!config) throw new CniError(ErrorCode.Internal, `CHECK: no record of attachment ${req.containerId}/${req.ifname}`);
  await bridgePlugin.check(withConfig(req, config));
}

async function gc(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  let runtime: OverlayRuntime;
  try {
    runtime = readOverlayRuntime(conf.runDir);
  } catch {
    // No usable lease now: GC needs no ranges, only what the lease database and the kernel hold.
    runtime = NO_LEASE;
  }
  await bridgePlugin.gc!(withConfig(req, bridgeConfigFor(req, runtime)));
}

async function status(req: Request): Promise<void> {
  const conf = validateConfig(req.config, schema);
  const runtime = readRuntime(conf.runDir, "STATUS");
  await bridgePlugin.status!(withConfig(req, bridgeConfigFor(req, runtime)));
}

export const overlayPlugin: Plugin = { name: "berth-overlay", cniArgs: ["IP", "MAC"], schema, add, del, check, gc, status };
