import { pluginEntry } from "../../protocol/entry.ts";
import { portmapPlugin } from "./portmap.ts";

export const main = pluginEntry(portmapPlugin, import.meta);
