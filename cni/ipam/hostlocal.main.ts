// The berth-host-local executable.
import { runPluginMain } from "../protocol/entry.ts";
import { hostLocalPlugin } from "./hostlocal.ts";

void runPluginMain(hostLocalPlugin);
