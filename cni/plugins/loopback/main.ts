import { pluginEntry } from "../../protocol/entry.ts";
import { loopbackPlugin } from "./loopback.ts";

export const main = pluginEntry(loopbackPlugin, import.meta);
