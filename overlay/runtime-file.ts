// `<run-dir>/overlay.json`: the agent's word to the berth-overlay CNI plugin about this host's
// part of the overlay (flannel's subnet.env, as JSON). Written atomically; `ready` is false
// before the lease is held and the device programmed, and after the agent stops.
import { join } from "node:path";
import { readSmallFile } from "../cni/protocol/files.ts";
import { configSchema, field, validateConfig } from "../cni/protocol/schema.ts";
import { CniError } from "../cni/protocol/types.ts";
import { writeFileAtomic } from "./atomic-file.ts";

export interface OverlayRuntime {
  ready: boolean;
  /** IPv4 cluster network, host subnet and its gateway (first address). */
  network?: string;
  subnet?: string;
  gateway?: string;
  /** All families, IPv4 first (dual-stack adds the IPv6 entries). */
  networks: string[];
  subnets: string[];
  gateways: string[];
  mtu?: number;
  vni: number;
  device: string;
  publicIP?: string;
  updatedAt: string;
}

export const RUNTIME_FILE = "overlay.json";

export function writeOverlayRuntime(runDir: string, runtime: OverlayRuntime): void {
  writeFileAtomic(join(runDir, RUNTIME_FILE), `${JSON.stringify(runtime, null, 2)}\n`, 0o644);
}

export class OverlayNotReadyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OverlayNotReadyError";
  }
}

/** The agent writes a few hundred bytes; anything much larger was not written by it. */
const MAX_RUNTIME_FILE_BYTES = 64 * 1024;

const runtimeSchema = configSchema({
  ready: field.boolean().require(),
  network: field.cidr(),
  subnet: field.cidr(),
  gateway: field.ip(),
  networks: field.array(field.cidr(), { maxItems: 64 }).require(),
  subnets: field.array(field.cidr(), { minItems: 1, maxItems: 2 }).require(),
  gateways: field.array(field.ip(), { maxItems: 2 }),
  mtu: field.int(68, 65535),
  vni: field.int(0, 0xffffff),
  device: field.string({ pattern: /^[^\s/:]{1,15}$/, patternName: "an interface name" }),
  publicIP: field.ip(),
  updatedAt: field.string(),
});

/**
 * Reads and validates the runtime file. Throws OverlayNotReadyError when it is missing, not a
 * regular file, unreadable, not ready, or not of the shape the agent writes: a file that is
 * partial or damaged means "no usable lease here yet", never a crash of the plugin.
 */
export function readOverlayRuntime(runDir: string): OverlayRuntime {
  const path = join(runDir, RUNTIME_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(readSmallFile(path, MAX_RUNTIME_FILE_BYTES));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT")
      throw new OverlayNotReadyError(`${path} does not exist: is the berth agent running?`);
    throw new OverlayNotReadyError(`${path} is unreadable: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    throw new OverlayNotReadyError(`${path} is not a JSON object`);
  const obj = raw as Record<string, unknown>;
  if (obj.ready === false) throw new OverlayNotReadyError(`the berth agent is not ready (${path} says ready=false)`);
  try {
    return validateConfig(obj, runtimeSchema) as OverlayRuntime;
  } catch (e) {
    const msg = e instanceof CniError ? e.message.replace(/^invalid config: /, "") : String(e);
    throw new OverlayNotReadyError(`${path} is not a valid runtime file: ${msg}`);
  }
}
