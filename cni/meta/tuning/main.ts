import { runPluginMain } from "../../protocol/entry.ts";
import { tuningPlugin } from "./tuning.ts";

void runPluginMain(tuningPlugin);
