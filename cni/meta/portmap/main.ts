import { runPluginMain } from "../../protocol/entry.ts";
import { portmapPlugin } from "./portmap.ts";

void runPluginMain(portmapPlugin);
