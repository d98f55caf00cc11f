// ipMasq of one attachment, shared by bridge and ptp: the nftables element lives and dies
// with the attachment, CHECK finds it, GC drops the elements of attachments no longer valid.

import { ipOf, normalizeCidr } from "../address/address.ts";
import {
  addMasquerade,
  attachmentOf,
  gcMasquerade,
  masqueradeOf,
  removeMasquerade,
  validAttachmentsOf,
} from "../nft/masquerade.ts";
import { CniError, ErrorCode, type Request, type Result } from "../protocol/types.ts";
import type { Undo } from "./undo.ts";

/** Adds the attachment's elements and registers their removal with the ADD's undo stack. */
export async function addAttachmentMasq(req: Request, addresses: string[], table: string, undo: Undo): Promise<void> {
  if (addresses.length === 0) return;
  await addMasquerade(attachmentOf(req), addresses, table);
  undo.push(() => removeAttachmentMasq(req, addresses, table));
}

/** Removes the attachment's elements; without known addresses, finds them by their tag. */
export async function removeAttachmentMasq(req: Request, addresses: string[], table: string): Promise<void> {
  if (addresses.length > 0) await removeMasquerade(attachmentOf(req), addresses, table);
  else await gcMasquerade(req.config.name, null, [attachmentOf(req)], table);
}

export async function checkAttachmentMasq(req: Request, prev: Result, table: string): Promise<void> {
  const have = new Set(await masqueradeOf(attachmentOf(req), table));
  for (const ip of prev.ips ?? []) {
    if (!have.has(ipOf(normalizeCidr(ip.address)))) {
      throw new CniError(ErrorCode.Internal, `CHECK: masquerade for ${ip.address} is missing`);
    }
  }
}

export async function gcAttachmentMasq(req: Request, table: string): Promise<void> {
  await gcMasquerade(req.config.name, validAttachmentsOf(req), [], table);
}
