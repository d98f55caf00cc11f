// `<run-dir>/overlay.json`: the agent's word to the berth-overlay CNI plugin about this host's
// part of the overlay (flannel's subnet.env, as JSON). Written atomically; `ready` is false
// before the lease is held and the device programmed, and after the agent stops.
import { readFileSync } from "node:fs";
import { join } from "node:path";
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

/** Reads the runtime file; throws OverlayNotReadyError when it is missing, unreadable or not ready. */
export function readOverlayRuntime(runDir: string): OverlayRuntime {
  const path = join(runDir, RUNTIME_FILE);
  let runtime: OverlayRuntime;
  try {
    runtime = JSON.parse(readFileSync(path, "utf8")) as OverlayRuntime;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT")
      throw new OverlayNotReadyError(`${path} does not exist: is the berth agent running?`);
    throw new OverlayNotReadyError(`${path} is unreadable: ${(e as Error).message}`);
  }
  if (!runtime.ready || !runtime.subnet)
    throw new OverlayNotReadyError(`the berth agent is not ready (${path} says ready=false)`);
  return runtime;
}
