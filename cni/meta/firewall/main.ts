import { runPluginMain } from "../../spec/entry.ts";
import { firewallPlugin } from "./firewall.ts";

void runPluginMain(firewallPlugin);
