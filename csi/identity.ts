// Identity service: who the driver is (GetPluginInfo), which services and features it offers
// (GetPluginCapabilities) and whether it can serve (Probe).
import { BERTH_VERSION } from "../native/version.ts";
import type { Driver } from "./driver.ts";
import { ConfigError } from "./errors.ts";
import type { GetPluginCapabilitiesResponse } from "./proto/generated/csi/v1/GetPluginCapabilitiesResponse.ts";
import type { GetPluginInfoResponse } from "./proto/generated/csi/v1/GetPluginInfoResponse.ts";
import type { ProbeResponse } from "./proto/generated/csi/v1/ProbeResponse.ts";

/** The version GetPluginInfo reports: berth's own. */
export const VENDOR_VERSION = BERTH_VERSION;
const DNS_LIKE = /^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$/;

/** Which services one driver process serves. */
export type DriverMode = "controller" | "node" | "both";

/** How volumes grow: ONLINE while mounted, or OFFLINE (the filesystem grows at the next stage). */
export type VolumeExpansion = "ONLINE" | "OFFLINE";

/** Checks a driver name as GetPluginInfo must report it (at most 63 characters, DNS-like). */
export function checkDriverName(name: string): void {
  if (name.length > 63 || !DNS_LIKE.test(name)) {
    throw new ConfigError(
      `driver name ${JSON.stringify(name)} must be at most 63 characters, alphanumeric at both ends, with - and . between`,
    );
  }
}

export class IdentityService {
  constructor(
    private readonly d: Driver,
    private readonly mode: DriverMode,
    private readonly expansion: VolumeExpansion,
  ) {}

  pluginInfo(): GetPluginInfoResponse {
    return {
      name: this.d.driverName,
      vendor_version: VENDOR_VERSION,
      manifest: { "capacity-enforcement": this.d.enforcement, "volume-expansion": this.expansion, mode: this.mode },
    };
  }

  pluginCapabilities(): GetPluginCapabilitiesResponse {
    return {
      capabilities: [
        { service: { type: "CONTROLLER_SERVICE" } },
        { service: { type: "VOLUME_ACCESSIBILITY_CONSTRAINTS" } },
        ...(this.mode === "node" ? [] : [{ service: { type: "GROUP_CONTROLLER_SERVICE" as const } }]),
        { volume_expansion: { type: this.expansion } },
      ],
    };
  }

  probe(): ProbeResponse {
    this.d.store.volume("vol-probe"); // the database answers
    return { ready: { value: true } };
  }
}
