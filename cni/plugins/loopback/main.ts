import { runPluginMain } from "../../spec/entry.ts";
import { loopbackPlugin } from "./loopback.ts";

void runPluginMain(loopbackPlugin);
