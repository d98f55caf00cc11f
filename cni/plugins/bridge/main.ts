import { runPluginMain } from "../../spec/entry.ts";
import { bridgePlugin } from "./bridge.ts";

void runPluginMain(bridgePlugin);
