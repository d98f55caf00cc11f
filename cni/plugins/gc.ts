// GC of the main plugins' host-side links, recognised by their deterministic names.
import { isNetlinkError } from "../../native/netlink/error.ts";
import type { Attachment } from "../protocol/types.ts";
import { withRtnl } from "./container-netns.ts";
import { hostLinkName, networkTag, retiredFrom } from "./link-names.ts";

/**
 * GC of host-side links: deletes every link of `network` (recognised by its deterministic
 * name) whose attachment is not in `valid`. Returns the failures, so GC can go on past them.
 */
export async function gcHostLinks(prefix: "bv" | "bp", network: string, valid: Attachment[]): Promise<string[]> {
  const keep = new Set(valid.map((a) => hostLinkName(prefix, network, a.containerID, a.ifname)));
  const tag = `${prefix}${networkTag(network)}`;
  const errors: string[] = [];
  await withRtnl(undefined, async (nl) => {
    for (const l of nl.linkList()) {
      // Links retired by a DEL whose background delete never ran (the process died) are
      // garbage whatever their attachment: that DEL has answered.
      const was = retiredFrom(l);
      const stale = was === undefined ? l.name.length === 14 && l.name.startsWith(tag) && !keep.has(l.name) : was.startsWith(tag);
      if (!stale) continue;
      try {
        await nl.linkDelAsync(l.index);
      } catch (e) {
        if (!isNetlinkError(e, "ENODEV") && !isNetlinkError(e, "ENOENT")) errors.push(`${l.name}: ${(e as Error).message}`);
      }
    }
  });
  return errors;
}
