// berth-firewall's rules in berth's inet table (forward hook):
//
//   set fw_pods4 / fw_pods6   pod addresses, comment = attachment tag
//   set fw_isolated           bridges with ingressPolicy same-bridge or isolated
//   map fw_iso_out            bridge : jump fw_iso_<hash of bridge>
//   chain fw_forward (filter, forward)
//       iifname @fw_isolated oifname vmap @fw_iso_out      traffic between isolated bridges
//       ct state established,related ip daddr @fw_pods4 accept
//       ip saddr @fw_pods4 accept                          (and the same for IPv6)
//   chain fw_iso_<h>   same-bridge: iifname != "<bridge>" drop     isolated: drop
//
// With br_netfilter (on here) frames bridged between two ports of one bridge reach the forward
// hook with iif = oif = the bridge, so "isolated" also separates pods on the same bridge.
// Note: an nftables accept is final only within its own base chain; the accept rules matter
// against a drop policy in berth's table, not against another table's drop.
import { shortHash } from "../digest.ts";
import { attachmentTag, type MasqAttachment } from "./masquerade.ts";
import { checkTableName, DEFAULT_TABLE, type NftElement, nftApply, nftElements } from "./nft.ts";
import { TaggedSets } from "./tagged.ts";

export type IngressPolicy = "open" | "same-bridge" | "isolated";

const SETS = ["fw_pods4", "fw_pods6"] as const;

function isoChain(bridge: string): string {
  return `fw_iso_${shortHash(bridge, 12)}`;
}

function checkIfname(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new Error(`invalid interface name "${name}"`);
  return name;
}

function baseScript(table: string): string[] {
  const t = `inet ${table}`;
  return [
    `add table ${t}`,
    `add set ${t} fw_pods4 { type ipv4_addr; }`,
    `add set ${t} fw_pods6 { type ipv6_addr; }`,
    `add set ${t} fw_isolated { type ifname; }`,
    `add map ${t} fw_iso_out { type ifname : verdict; }`,
    `add chain ${t} fw_forward { type filter hook forward priority filter; policy accept; }`,
    `flush chain ${t} fw_forward`,
    `add rule ${t} fw_forward iifname @fw_isolated oifname vmap @fw_iso_out`,
    `add rule ${t} fw_forward ct state established,related ip daddr @fw_pods4 accept`,
    `add rule ${t} fw_forward ip saddr @fw_pods4 accept`,
    `add rule ${t} fw_forward ct state established,related ip6 daddr @fw_pods6 accept`,
    `add rule ${t} fw_forward ip6 saddr @fw_pods6 accept`,
  ];
}

/**
 * Accepts the pod's traffic and, for a non-open policy, isolates its bridge; one transaction.
 * `addresses` are canonical IPs.
 */
export async function addFirewall(
  a: MasqAttachment,
  addresses: string[],
  policy: IngressPolicy,
  bridge: string | undefined,
  table = DEFAULT_TABLE,
): Promise<void> {
  checkTableName(table);
  const t = `inet ${table}`;
  const tag = attachmentTag(a);
  const lines = baseScript(table);
  if (policy !== "open") {
    if (!bridge) throw new Error(`ingressPolicy ${policy} needs a bridge`);
    checkIfname(bridge);
    const chain = isoChain(bridge);
    lines.push(
      `add chain ${t} ${chain}`,
      `flush chain ${t} ${chain}`,
      policy === "same-bridge" ? `add rule ${t} ${chain} iifname != "${bridge}" drop` : `add rule ${t} ${chain} drop`,
      `add element ${t} fw_isolated { "${bridge}" }`,
      `add element ${t} fw_iso_out { "${bridge}" : jump ${chain} }`,
    );
  }
  for (const ip of addresses) {
    const set = ip.includes(":") ? "fw_pods6" : "fw_pods4";
    // Replaces an element a vanished attachment left with this address (the address is ours now).
    lines.push(`add element ${t} ${set} { ${ip} }`, `delete element ${t} ${set} { ${ip} }`);
    lines.push(`add element ${t} ${set} { ${ip} comment "${tag}" }`);
  }
  await nftApply(`${lines.join("\n")}\n`);
}

const podSets = new TaggedSets(SETS);

/** Removes the attachment's pod addresses (idempotent). Bridge isolation stays: it belongs to the bridge. */
export function removeFirewall(a: MasqAttachment, table = DEFAULT_TABLE): Promise<NftElement[]> {
  return podSets.remove(a, table);
}

export function gcFirewall(network: string, valid: MasqAttachment[], table = DEFAULT_TABLE): Promise<NftElement[]> {
  return podSets.gc(network, valid, table);
}

/** The attachment's pod addresses as the kernel holds them. */
export async function firewallOf(a: MasqAttachment, table = DEFAULT_TABLE): Promise<string[]> {
  return (await podSets.of(a, table)).map((e) => e.key);
}

/** Bridges isolated in the table (for CHECK). */
export async function isolatedBridges(table = DEFAULT_TABLE): Promise<string[]> {
  checkTableName(table);
  return ((await nftElements("inet", table)) ?? []).filter((e) => e.set === "fw_isolated").map((e) => e.key);
}
