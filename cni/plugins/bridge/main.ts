import { runPluginMain } from "../../protocol/entry.ts";
import { bridgePlugin } from "./bridge.ts";

void runPluginMain(bridgePlugin);
