import { pluginEntry } from "../../protocol/entry.ts";
import { firewallPlugin } from "./firewall.ts";

export const main = pluginEntry(firewallPlugin, import.meta);
