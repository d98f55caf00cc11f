import { runPluginMain } from "../../protocol/entry.ts";
import { bandwidthPlugin } from "./bandwidth.ts";

void runPluginMain(bandwidthPlugin);
