// ipMasq for bridge/ptp in berth's nftables table, one atomic transaction per call:
//
//   map masq4/masq6 { pod address : jump n_<net>_masq }   elements carry the attachment in a comment
//   chain postrouting (nat)   ip saddr vmap @masq4; ip6 saddr vmap @masq6
//   chain n_<net>_masq        ip daddr <pod subnet> return; ip daddr <multicast> return; masquerade
//
// Adding a pod is adding one map element; removing it is deleting one (idempotent: the
// transaction adds the element before deleting it). GC lists the maps and drops every element
// of the network whose attachment is not valid — the reference plugins have no GC at all.

import { familyOf, ipOf, subnetOf } from "../address/address.ts";
import { shortHash } from "../digest.ts";
import { gcAttachments } from "../protocol/config.ts";
import type { Request } from "../protocol/types.ts";
import { checkTableName, DEFAULT_TABLE, nftApply, nftList } from "./nft.ts";

export interface MasqAttachment {
  network: string;
  containerId: string;
  ifname: string;
}

const hash = shortHash;

export function networkChain(network: string): string {
  return `n_${hash(network, 12)}_masq`;
}

/** Element comment naming the attachment: `<network hash> <attachment hash>` (fits nft's 128-byte limit). */
/** The attachment a request is about: the identity berth's nftables elements are tagged with. */
export function attachmentOf(req: Request): MasqAttachment {
  return { network: req.config.name, containerId: req.containerId, ifname: req.ifname };
}

/** GC's valid attachments of the request's network (code 7 when the config lists none). */
export function validAttachmentsOf(req: Request): MasqAttachment[] {
  const network = req.config.name;
  return gcAttachments(req.config).map((a) => ({ network, containerId: a.containerID, ifname: a.ifname }));
}

export function attachmentTag(a: MasqAttachment): string {
  return `${hash(a.network, 12)} ${hash(`${a.containerId}/${a.ifname}`, 20)}`;
}

function baseScript(table: string): string {
  return [
    `add table inet ${table}`,
    `add map inet ${table} masq4 { type ipv4_addr : verdict; }`,
    `add map inet ${table} masq6 { type ipv6_addr : verdict; }`,
    `add chain inet ${table} postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    `flush chain inet ${table} postrouting`,
    `add rule inet ${table} postrouting ip saddr vmap @masq4`,
    `add rule inet ${table} postrouting ip6 saddr vmap @masq6`,
  ].join("\n");
}

/**
 * Masquerades traffic from the attachment's addresses (CIDRs from the IPAM result) to
 * anywhere outside their subnets and multicast.
 */
export async function addMasquerade(a: MasqAttachment, addresses: string[], table = DEFAULT_TABLE): Promise<void> {
  if (addresses.length === 0) return;
  checkTableName(table);
  const chain = networkChain(a.network);
  const lines = [baseScript(table), `add chain inet ${table} ${chain}`, `flush chain inet ${table} ${chain}`];
  for (const cidr of addresses) {
    const f = familyOf(cidr);
    lines.push(`add rule inet ${table} ${chain} ${f === 4 ? "ip" : "ip6"} daddr ${subnetOf(cidr)} return`);
  }
  lines.push(`add rule inet ${table} ${chain} ip daddr 224.0.0.0/4 return`);
  lines.push(`add rule inet ${table} ${chain} ip6 daddr ff00::/8 return`);
  lines.push(`add rule inet ${table} ${chain} masquerade`);
  const tag = attachmentTag(a);
  for (const cidr of addresses) {
    const map = familyOf(cidr) === 4 ? "masq4" : "masq6";
    lines.push(`add element inet ${table} ${map} { ${ipOf(cidr)} comment "${tag}" : jump ${chain} }`);
  }
  await nftApply(`${lines.join("\n")}\n`);
}

/** Removes the attachment's elements. Idempotent: a missing table or element is fine. */
export async function removeMasquerade(a: MasqAttachment, addresses: string[], table = DEFAULT_TABLE): Promise<void> {
  checkTableName(table);
  if (addresses.length === 0) {
    await gcMasquerade(a.network, null, [a], table);
    return;
  }
  const chain = networkChain(a.network);
  const lines = [baseScript(table), `add chain inet ${table} ${chain}`];
  for (const cidr of addresses) {
    const map = familyOf(cidr) === 4 ? "masq4" : "masq6";
    lines.push(`add element inet ${table} ${map} { ${ipOf(cidr)} : jump ${chain} }`);
    lines.push(`delete element inet ${table} ${map} { ${ipOf(cidr)} }`);
  }
  await nftApply(`${lines.join("\n")}\n`);
}

interface MapElement {
  address: string;
  tag: string;
  map: "masq4" | "masq6";
}

export async function listMasquerade(table = DEFAULT_TABLE): Promise<MapElement[]> {
  checkTableName(table);
  const out: MapElement[] = [];
  for (const map of ["masq4", "masq6"] as const) {
    const objs = await nftList(["list", "map", "inet", table, map]);
    for (const o of objs ?? []) {
      const m = o.map as { elem?: unknown[] } | undefined;
      for (const pair of m?.elem ?? []) {
        const key = (pair as [{ elem?: { val: string; comment?: string } } | string, unknown])[0];
        if (typeof key === "object" && key.elem) out.push({ address: key.elem.val, tag: key.elem.comment ?? "", map });
      }
    }
  }
  return out;
}

/**
 * Drops elements of `network` whose attachment is not in `valid` (GC), or — when `valid` is
 * null — the elements of the attachments in `remove` (DEL without known addresses).
 */
export async function gcMasquerade(
  network: string,
  valid: MasqAttachment[] | null,
  remove: MasqAttachment[] = [],
  table = DEFAULT_TABLE,
): Promise<number> {
  const netTag = hash(network, 12);
  const keep = new Set((valid ?? []).map(attachmentTag));
  const drop = new Set(remove.map(attachmentTag));
  const stale = (await listMasquerade(table)).filter(
    (e) => e.tag.startsWith(`${netTag} `) && (valid !== null ? !keep.has(e.tag) : drop.has(e.tag)),
  );
  if (stale.length === 0) return 0;
  await nftApply(`${stale.map((e) => `delete element inet ${table} ${e.map} { ${e.address} }`).join("\n")}\n`);
  return stale.length;
}

/** The attachment's masquerade elements (for CHECK). */
export async function masqueradeOf(a: MasqAttachment, table = DEFAULT_TABLE): Promise<string[]> {
  const tag = attachmentTag(a);
  return (await listMasquerade(table)).filter((e) => e.tag === tag).map((e) => e.address);
}

/** Removes the whole table (tests, uninstall). */
export async function deleteTable(table: string): Promise<void> {
  checkTableName(table);
  await nftApply(`add table inet ${table}\ndelete table inet ${table}\n`);
}
