// The berth-host-local executable.
import { runPluginMain } from "../spec/entry.ts";
import { hostLocalPlugin } from "./hostlocal.ts";

void runPluginMain(hostLocalPlugin);
