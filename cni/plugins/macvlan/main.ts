import { runPluginMain } from "../../protocol/entry.ts";
import { macvlanPlugin } from "./macvlan.ts";

void runPluginMain(macvlanPlugin);
