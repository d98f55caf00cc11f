import { pluginEntry } from "../../protocol/entry.ts";
import { ptpPlugin } from "./ptp.ts";

export const main = pluginEntry(ptpPlugin, import.meta);
