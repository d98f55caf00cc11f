import { runPluginMain } from "../../protocol/entry.ts";
import { firewallPlugin } from "./firewall.ts";

void runPluginMain(firewallPlugin);
