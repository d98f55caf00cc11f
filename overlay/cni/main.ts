import { runPluginMain } from "../../cni/spec/entry.ts";
import { overlayPlugin } from "./plugin.ts";

void runPluginMain(overlayPlugin);
