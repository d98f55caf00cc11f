import { runPluginMain } from "../../protocol/entry.ts";
import { loopbackPlugin } from "./loopback.ts";

void runPluginMain(loopbackPlugin);
