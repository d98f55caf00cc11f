import { pluginEntry } from "../../protocol/entry.ts";
import { macvlanPlugin } from "./macvlan.ts";

export const main = pluginEntry(macvlanPlugin, import.meta);
