import { pluginEntry } from "../../protocol/entry.ts";
import { tuningPlugin } from "./tuning.ts";

export const main = pluginEntry(tuningPlugin, import.meta);
