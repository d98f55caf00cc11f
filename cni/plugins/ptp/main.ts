import { runPluginMain } from "../../protocol/entry.ts";
import { ptpPlugin } from "./ptp.ts";

void runPluginMain(ptpPlugin);
