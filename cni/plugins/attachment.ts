// How a DEL takes an attachment's host-side link away: deleted at once, or retired through
// the invocation's host (req.host.linkRetirer, see LinkRetirer).
import type { Rtnl } from "../../native/netlink/socket.ts";
import type { LinkRetirer } from "../protocol/types.ts";
import { deleteLinkIfPresent } from "./link-removal.ts";

/**
 * Removes a host-side link, or retires it through `retirer` (the invocation's host's, see
 * LinkRetirer); false when it was not there.
 */
export function retireLinkIfPresent(nl: Rtnl, name: string, retirer?: LinkRetirer): Promise<boolean> {
  return retirer ? retirer(nl, name) : deleteLinkIfPresent(nl, name);
}
