import { runPluginMain } from "../../spec/entry.ts";
import { bandwidthPlugin } from "./bandwidth.ts";

void runPluginMain(bandwidthPlugin);
