import { runPluginMain } from "../../cni/protocol/entry.ts";
import { overlayPlugin } from "./plugin.ts";

void runPluginMain(overlayPlugin);
