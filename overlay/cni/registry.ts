// Every berth CNI plugin the fast path serves, by executable name: cni/'s own plus
// berth-overlay, whose code lives in this layer. The agent and `berth cni-server` serve these.
import { CNI_PLUGINS, type PluginLoader } from "../../cni/fastpath/plugins.ts";

export const BERTH_PLUGINS: Readonly<Record<string, PluginLoader>> = {
  ...CNI_PLUGINS,
  "berth-overlay": async () => (await import("./plugin.ts")).overlayPlugin,
};
