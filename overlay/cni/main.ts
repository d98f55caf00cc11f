import { pluginEntry } from "../../cni/protocol/entry.ts";
import { overlayPlugin } from "./plugin.ts";

export const main = pluginEntry(overlayPlugin, import.meta);
