// Taking links away: deleting one that may already be gone, or retiring it through the
// invocation's host (req.host.linkRetirer), taking one out of service for a deferred delete,
// and deleting retired links a dead process left behind.
import { isNetlinkError } from "../../native/netlink/error.ts";
import type { Rtnl } from "../../native/netlink/socket.ts";
import { randomBytes } from "../digest.ts";
import type { LinkRetirer } from "../protocol/types.ts";
import { RETIRED_PREFIX, retiredFrom } from "./link-names.ts";

/** Deletes a link, treating "already gone" as success. */
export async function deleteLinkIfPresent(nl: Rtnl, name: string): Promise<boolean> {
  try {
    await nl.linkDelAsync(name);
    return true;
  } catch (e) {
    if (isNetlinkError(e, "ENODEV") || isNetlinkError(e, "ENOENT")) return false;
    throw e;
  }
}

/**
 * Removes a host-side link, or retires it through `retirer` (the invocation's host's, see
 * LinkRetirer); false when it was not there.
 */
export function retireLinkIfPresent(nl: Rtnl, name: string, retirer?: LinkRetirer): Promise<boolean> {
  return retirer ? retirer(nl, name) : deleteLinkIfPresent(nl, name);
}

/** Deletes the retired links that were `name` (or whose old name passes `match`); returns how many went. */
export async function deleteRetiredLinks(nl: Rtnl, match: (oldName: string) => boolean): Promise<number> {
  let n = 0;
  for (const l of await nl.linkListAsync()) {
    const was = retiredFrom(l);
    if (was === undefined || !match(was)) continue;
    try {
      await nl.linkDelAsync(l.index);
      n++;
    } catch (e) {
      if (!isNetlinkError(e, "ENODEV")) throw e; // the background delete got there first
    }
  }
  return n;
}

/**
 * Takes a link out of service for a deferred delete: down (and off its bridge with `detach`),
 * then renamed to `bz<hex>` so its own name is free for the next ADD at once. One batch, on the
 * thread pool unless its socket says inline: a busy agent's thread does not wait while the
 * kernel takes a bridge port down. (A link must be down before it can be renamed, hence two
 * messages.)
 */
export function takeOutOfService(nl: Rtnl, index: number, opts: { detach?: boolean; alias?: string } = {}): Promise<void> {
  const name = `${RETIRED_PREFIX}${randomBytes(4).toString("hex")}`;
  return nl
    .batch()
    .linkSet(index, opts.detach ? { up: false, master: null } : { up: false })
    .linkSet(index, opts.alias === undefined ? { name } : { name, alias: opts.alias })
    .runAsync();
}
