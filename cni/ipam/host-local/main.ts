// The berth-host-local executable.
import { runPluginMain } from "../../protocol/entry.ts";
import { hostLocalPlugin } from "./host-local.ts";

void runPluginMain(hostLocalPlugin);
