// The berth-static executable.
import { runPluginMain } from "../../protocol/entry.ts";
import { staticPlugin } from "./static.ts";

void runPluginMain(staticPlugin);
