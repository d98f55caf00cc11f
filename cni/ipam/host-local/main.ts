// The berth-host-local executable.
import { pluginEntry } from "../../protocol/entry.ts";
import { hostLocalPlugin } from "./host-local.ts";

export const main = pluginEntry(hostLocalPlugin, import.meta);
