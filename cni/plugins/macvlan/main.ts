import { runPluginMain } from "../../spec/entry.ts";
import { macvlanPlugin } from "./macvlan.ts";

void runPluginMain(macvlanPlugin);
