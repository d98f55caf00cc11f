// The berth-static executable.
import { pluginEntry } from "../../protocol/entry.ts";
import { staticPlugin } from "./static.ts";

export const main = pluginEntry(staticPlugin, import.meta);
