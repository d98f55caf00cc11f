// Elements of some named sets/maps in berth's inet table, each tagged (its comment) with the
// attachment it belongs to: what portmap and firewall share. Removal by attachment, GC by
// network, and listing all read the table once and delete in one transaction.
import { attachmentTag, type MasqAttachment } from "./masquerade.ts";
import { checkTableName, type NftElement, nftApply, nftElements } from "./nft.ts";

export class TaggedSets {
  constructor(private readonly sets: readonly string[]) {}

  /** Every element of these sets in `table` (none when the table is absent). */
  async list(table: string): Promise<NftElement[]> {
    checkTableName(table);
    return ((await nftElements("inet", table)) ?? []).filter((e) => this.sets.includes(e.set));
  }

  /** The elements of one attachment. */
  async of(a: MasqAttachment, table: string): Promise<NftElement[]> {
    const tag = attachmentTag(a);
    return (await this.list(table)).filter((e) => e.comment === tag);
  }

  /** Removes everything of one attachment. Idempotent; returns the removed elements. */
  remove(a: MasqAttachment, table: string): Promise<NftElement[]> {
    const tag = attachmentTag(a);
    return this.drop(table, (t) => t === tag);
  }

  /** GC: removes the elements of `network` whose attachment is not in `valid`. */
  gc(network: string, valid: MasqAttachment[], table: string): Promise<NftElement[]> {
    const netTag = attachmentTag({ network, containerId: "", ifname: "" }).split(" ")[0]!;
    const keep = new Set(valid.map(attachmentTag));
    return this.drop(table, (t) => t.startsWith(`${netTag} `) && !keep.has(t));
  }

  /** Deletes the elements whose tag `select` picks, in one transaction. */
  private async drop(table: string, select: (tag: string) => boolean): Promise<NftElement[]> {
    const stale = (await this.list(table)).filter((e) => select(e.comment));
    if (stale.length === 0) return [];
    await nftApply(`${stale.map((e) => `delete element inet ${table} ${e.set} { ${e.key} }`).join("\n")}\n`);
    return stale;
  }
}
