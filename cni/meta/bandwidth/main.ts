import { pluginEntry } from "../../protocol/entry.ts";
import { bandwidthPlugin } from "./bandwidth.ts";

export const main = pluginEntry(bandwidthPlugin, import.meta);
