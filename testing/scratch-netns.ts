// Test fixture: a throwaway network namespace (named with the test's prefix) with an
// Rtnl socket inside it. Everything created in it disappears when it is deleted.

import { Rtnl } from "../native/netlink/socket.ts";
import { Netns } from "../native/netns.ts";
import { addNetns, delNetns } from "./kernel.ts";

export interface ScratchNetns {
  name: string;
  ns: Netns;
  rtnl: Rtnl;
  close(): void;
}

export function scratchNetns(name: string): ScratchNetns {
  addNetns(name);
  let ns: Netns | undefined;
  try {
    ns = Netns.open(name);
    const rtnl = Rtnl.open(ns);
    const opened = ns;
    return {
      name,
      ns,
      rtnl,
      close() {
        rtnl.close();
        opened.close();
        delNetns(name);
      },
    };
  } catch (e) {
    ns?.close();
    delNetns(name);
    throw e;
  }
}
