// The CNI plugins of this layer by executable name, and the registry the fast path serves
// them from. Loaded on first use, so a server that never sees a macvlan request never loads
// macvlan's code. berth-overlay lives above this layer: overlay/cni/registry.ts adds it.
import type { Plugin } from "../protocol/types.ts";

export type PluginLoader = () => Promise<Plugin>;

/** A registry entry: the plugin itself, or a loader for it. */
export type PluginEntry = Plugin | PluginLoader;

export const CNI_PLUGINS: Readonly<Record<string, PluginLoader>> = {
  "berth-bridge": async () => (await import("../plugins/bridge/bridge.ts")).bridgePlugin,
  "berth-ptp": async () => (await import("../plugins/ptp/ptp.ts")).ptpPlugin,
  "berth-loopback": async () => (await import("../plugins/loopback/loopback.ts")).loopbackPlugin,
  "berth-macvlan": async () => (await import("../plugins/macvlan/macvlan.ts")).macvlanPlugin,
  "berth-host-local": async () => (await import("../ipam/host-local/host-local.ts")).hostLocalPlugin,
  "berth-static": async () => (await import("../ipam/static/static.ts")).staticPlugin,
  "berth-portmap": async () => (await import("../meta/portmap/portmap.ts")).portmapPlugin,
  "berth-firewall": async () => (await import("../meta/firewall/firewall.ts")).firewallPlugin,
  "berth-tuning": async () => (await import("../meta/tuning/tuning.ts")).tuningPlugin,
  "berth-bandwidth": async () => (await import("../meta/bandwidth/bandwidth.ts")).bandwidthPlugin,
};

/** Resolves registry entries once each; a failed load is retried on the next request. */
export class PluginRegistry {
  private readonly loaded = new Map<string, Promise<Plugin>>();

  constructor(private readonly entries: Readonly<Record<string, PluginEntry>>) {}

  types(): string[] {
    return Object.keys(this.entries);
  }

  /** The plugin for `type`, or undefined when the registry has no such type. */
  get(type: string): Promise<Plugin> | undefined {
    if (!Object.hasOwn(this.entries, type)) return undefined;
    let p = this.loaded.get(type);
    if (!p) {
      const entry = this.entries[type]!;
      p = typeof entry === "function" ? entry() : Promise.resolve(entry);
      p.catch(() => this.loaded.delete(type));
      this.loaded.set(type, p);
    }
    return p;
  }
}
