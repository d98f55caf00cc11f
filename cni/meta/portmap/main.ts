import { runPluginMain } from "../../spec/entry.ts";
import { portmapPlugin } from "./portmap.ts";

void runPluginMain(portmapPlugin);
