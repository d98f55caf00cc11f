import { pluginEntry } from "../../protocol/entry.ts";
import { bridgePlugin } from "./bridge.ts";

export const main = pluginEntry(bridgePlugin, import.meta);
