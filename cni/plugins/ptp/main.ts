import { runPluginMain } from "../../spec/entry.ts";
import { ptpPlugin } from "./ptp.ts";

void runPluginMain(ptpPlugin);
