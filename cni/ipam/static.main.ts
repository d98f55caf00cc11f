// The berth-static executable.
import { runPluginMain } from "../spec/entry.ts";
import { staticPlugin } from "./static.ts";

void runPluginMain(staticPlugin);
