// Deferred link deletion for the resident fast path. Deleting a link makes the caller wait
// for an RCU barrier (~20 ms), which would dominate every DEL. Inside the agent a DEL instead
// takes the host end out of service at once — down, off its bridge, renamed to `bz<hex>` so
// the attachment's name is free for the next ADD — and deletes it on the thread pool. The
// address was already released by then; a down, detached veth carries no traffic.
import { isNetlinkError } from "../../native/netlink/error.ts";
import { Rtnl } from "../../native/netlink/socket.ts";
import { RETIRED_PREFIX, retiredAlias } from "../plugins/link-names.ts";
import { deleteLinkIfPresent, takeOutOfService } from "../plugins/link-removal.ts";
import type { LinkRetirer } from "../protocol/types.ts";

export interface LinkRetirement {
  /** What a server's invocations retire their host links through (InvocationHost.linkRetirer). */
  readonly retire: LinkRetirer;
  /** Waits for every background delete and closes the reaper's socket. */
  close(): Promise<void>;
}

/** One server's retirer: its own reaper socket and background deletes. */
export function createLinkRetirer(log: (line: string) => void = () => {}): LinkRetirement {
  const reaper = Rtnl.open();
  const pending = new Set<Promise<void>>();
  // Leftovers of a previous run that stopped before its background deletes finished.
  for (const l of reaper.linkList()) {
    if (l.name.startsWith(RETIRED_PREFIX) && l.name.length === 10 && l.kind === "veth" && !l.up) {
      const p: Promise<void> = reaper
        .linkDelAsync(l.index)
        .catch(() => {})
        .finally(() => pending.delete(p));
      pending.add(p);
    }
  }
  let closed = false;
  const retire: LinkRetirer = async (nl, name) => {
    if (closed) return deleteLinkIfPresent(nl, name); // no reaper left to delete it later
    const link = await nl.linkGetAsync(name);
    if (!link) return false;
    try {
      await takeOutOfService(nl, link.index, { detach: true, alias: retiredAlias(name) });
    } catch (e) {
      if (isNetlinkError(e, "ENODEV")) return false;
      throw e;
    }
    const p: Promise<void> = reaper
      .linkDelAsync(link.index)
      .catch((e) => {
        if (!isNetlinkError(e, "ENODEV")) log(`cni server: deleting retired link ${name} failed: ${(e as Error).message}`);
      })
      .finally(() => pending.delete(p));
    pending.add(p);
    return true;
  };
  return {
    retire,
    async close() {
      closed = true;
      await Promise.all([...pending]);
      reaper.close();
    },
  };
}
