import { runPluginMain } from "../../spec/entry.ts";
import { tuningPlugin } from "./tuning.ts";

void runPluginMain(tuningPlugin);
