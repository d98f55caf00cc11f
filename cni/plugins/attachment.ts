// How a DEL takes an attachment's host-side link away: deleted at once, or retired through
// the hook a resident process installs.
import type { Rtnl } from "../../native/netlink/socket.ts";
import { deleteLinkIfPresent } from "./link-removal.ts";

/**
 * How a DEL takes a host-side link away. A short-lived plugin deletes it and waits (~20 ms:
 * the kernel's RCU barrier per delete). A resident process (the agent's fast path) installs
 * a retirer that takes the link out of service at once — down, off the bridge, renamed so
 * the next ADD for the attachment can reuse the name — and deletes it in the background.
 */
export type LinkRetirer = (nl: Rtnl, name: string) => Promise<boolean>;
let retirer: LinkRetirer | null = null;

export function setLinkRetirer(r: LinkRetirer | null): void {
  retirer = r;
}

/** Removes (or retires) a host-side link; false when it was not there. */
export function retireLinkIfPresent(nl: Rtnl, name: string): Promise<boolean> {
  return retirer ? retirer(nl, name) : deleteLinkIfPresent(nl, name);
}
