// Host port mappings (berth-portmap) in berth's inet table. Every mapping is a map element,
// so a pod's ports cost no rules and a lookup is one hash probe however many pods there are:
//
//   map pm4_any  { proto . hostPort            : pod . containerPort }   hostIP unset / 0.0.0.0
//   map pm4_ip   { hostIP . proto . hostPort   : pod . containerPort }   a specific hostIP (wins)
//   set pm4_snat { pod . proto . containerPort }         from 127.0.0.0/8 (snat) → masquerade
//   set pm4_all  { pod . proto . containerPort }         masqAll → masquerade every DNATed flow
//   set pm4_hairpin { pod . pod . proto . containerPort } a pod reaching its own hostPort
//   (pm6_* the same for IPv6; no pm6_snat: ::1 cannot be routed off the host)
//
//   chain pm_prerouting (nat, dstnat)  fib daddr type local jump pm_dnat
//   chain pm_output     (nat, -100)    fib daddr type local jump pm_dnat   the host itself
//   chain pm_dnat                      dnat via pm4_ip, then pm4_any (a failed lookup falls through)
//   chain pm_postrouting (nat, srcnat) the masquerade sets
//
// Elements carry the attachment tag as their comment; DEL and GC list the table and delete by
// tag. Chain names are prefixed pm_ so they never collide with the masquerade module's chains.
import { attachmentTag, type MasqAttachment } from "./masquerade.ts";
import { checkTableName, DEFAULT_TABLE, type NftElement, NftError, nftApply } from "./nft.ts";
import { TaggedSets } from "./tagged.ts";

export type Protocol = "tcp" | "udp" | "sctp";

/** One DNAT entry of an attachment, in one address family. */
export interface PortmapEntry {
  family: 4 | 6;
  protocol: Protocol;
  hostPort: number;
  /** Canonical host address; undefined matches every local address. */
  hostIP?: string;
  /** Canonical pod address. */
  pod: string;
  containerPort: number;
}

export interface PortmapOptions {
  /** Masquerade flows from 127.0.0.0/8 (the host reaching its own localhost:hostPort). */
  snat: boolean;
  /** Masquerade every DNATed flow (the pod then sees the host as the client). */
  masqAll: boolean;
}

/** The attachment already holding a host port; thrown by addPortmap. */
export class PortConflictError extends Error {
  constructor(
    readonly entry: PortmapEntry,
    readonly heldBy: string,
  ) {
    const where = entry.hostIP ? `${entry.hostIP}:${entry.hostPort}` : `port ${entry.hostPort}`;
    super(`host ${where}/${entry.protocol} is already mapped to ${heldBy} by another attachment`);
    this.name = "PortConflictError";
  }
}

export const PORTMAP_SETS = [
  "pm4_any",
  "pm4_ip",
  "pm4_snat",
  "pm4_all",
  "pm4_hairpin",
  "pm6_any",
  "pm6_ip",
  "pm6_all",
  "pm6_hairpin",
] as const;

function baseScript(table: string): string[] {
  const t = `inet ${table}`;
  const lines = [`add table ${t}`];
  for (const f of [4, 6] as const) {
    const addr = f === 4 ? "ipv4_addr" : "ipv6_addr";
    lines.push(`add map ${t} pm${f}_any { type inet_proto . inet_service : ${addr} . inet_service; }`);
    lines.push(`add map ${t} pm${f}_ip { type ${addr} . inet_proto . inet_service : ${addr} . inet_service; }`);
    if (f === 4) lines.push(`add set ${t} pm4_snat { type ${addr} . inet_proto . inet_service; }`);
    lines.push(`add set ${t} pm${f}_all { type ${addr} . inet_proto . inet_service; }`);
    lines.push(`add set ${t} pm${f}_hairpin { type ${addr} . ${addr} . inet_proto . inet_service; }`);
  }
  lines.push(
    `add chain ${t} pm_dnat`,
    `add chain ${t} pm_prerouting { type nat hook prerouting priority dstnat; policy accept; }`,
    `add chain ${t} pm_output { type nat hook output priority -100; policy accept; }`,
    `add chain ${t} pm_postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    // Rewritten on every call, so a table from an older berth converges in one transaction.
    `flush chain ${t} pm_dnat`,
    `flush chain ${t} pm_prerouting`,
    `flush chain ${t} pm_output`,
    `flush chain ${t} pm_postrouting`,
    `add rule ${t} pm_prerouting fib daddr type local jump pm_dnat`,
    `add rule ${t} pm_output fib daddr type local jump pm_dnat`,
    `add rule ${t} pm_dnat meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @pm4_ip`,
    `add rule ${t} pm_dnat meta nfproto ipv4 dnat ip to meta l4proto . th dport map @pm4_any`,
    `add rule ${t} pm_dnat meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @pm6_ip`,
    `add rule ${t} pm_dnat meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @pm6_any`,
    `add rule ${t} pm_postrouting ip saddr 127.0.0.0/8 ip daddr . meta l4proto . th dport @pm4_snat masquerade`,
    `add rule ${t} pm_postrouting ct status dnat ip daddr . meta l4proto . th dport @pm4_all masquerade`,
    `add rule ${t} pm_postrouting ct status dnat ip6 daddr . meta l4proto . th dport @pm6_all masquerade`,
    `add rule ${t} pm_postrouting ip saddr . ip daddr . meta l4proto . th dport @pm4_hairpin masquerade`,
    `add rule ${t} pm_postrouting ip6 saddr . ip6 daddr . meta l4proto . th dport @pm6_hairpin masquerade`,
  );
  return lines;
}

interface Element {
  set: (typeof PORTMAP_SETS)[number];
  key: string;
  value?: string;
}

/** The elements one entry contributes (keys in nft's own rendering, so listings compare equal). */
function elementsOf(e: PortmapEntry, opts: PortmapOptions): Element[] {
  const f = e.family;
  const target = `${e.pod} . ${e.containerPort}`;
  const podPort = `${e.pod} . ${e.protocol} . ${e.containerPort}`;
  const out: Element[] = [
    e.hostIP
      ? { set: `pm${f}_ip`, key: `${e.hostIP} . ${e.protocol} . ${e.hostPort}`, value: target }
      : { set: `pm${f}_any`, key: `${e.protocol} . ${e.hostPort}`, value: target },
    { set: `pm${f}_hairpin`, key: `${e.pod} . ${podPort}` },
  ];
  if (opts.snat && f === 4) out.push({ set: "pm4_snat", key: podPort });
  if (opts.masqAll) out.push({ set: `pm${f}_all`, key: podPort });
  return out;
}

function render(el: Element, tag?: string): string {
  const comment = tag ? ` comment "${tag}"` : "";
  return el.value === undefined ? `{ ${el.key}${comment} }` : `{ ${el.key}${comment} : ${el.value} }`;
}

const portmapSets = new TaggedSets(PORTMAP_SETS);

/**
 * Installs an attachment's entries in one transaction. An element of another attachment
 * with the same key is taken over when it points at this pod (its owner is gone: the pod
 * address is ours now) and is a PortConflictError when it points elsewhere.
 */
export async function addPortmap(
  a: MasqAttachment,
  entries: PortmapEntry[],
  opts: PortmapOptions,
  table = DEFAULT_TABLE,
): Promise<void> {
  if (entries.length === 0) return;
  checkTableName(table);
  const tag = attachmentTag(a);
  const existing = new Map((await portmapSets.list(table)).map((e) => [`${e.set} ${e.key}`, e]));
  const lines = baseScript(table);
  const seen = new Set<string>();
  for (const entry of entries) {
    for (const el of elementsOf(entry, opts)) {
      const id = `${el.set} ${el.key}`;
      if (seen.has(id)) continue;
      seen.add(id);
      const old = existing.get(id);
      if (old && old.comment !== tag) {
        if (old.value !== el.value) throw new PortConflictError(entry, old.value ?? "");
        lines.push(`delete element inet ${table} ${el.set} { ${el.key} }`);
      }
      lines.push(`add element inet ${table} ${el.set} ${render(el, tag)}`);
    }
  }
  try {
    await nftApply(`${lines.join("\n")}\n`);
  } catch (e) {
    // A parallel ADD claimed a port between our listing and our transaction.
    if (e instanceof NftError && /File exists/.test(e.stderr)) {
      const after = new Map((await portmapSets.list(table)).map((x) => [`${x.set} ${x.key}`, x]));
      for (const entry of entries) {
        const el = elementsOf(entry, opts)[0]!;
        const held = after.get(`${el.set} ${el.key}`);
        if (held && held.comment !== tag && held.value !== el.value) throw new PortConflictError(entry, held.value ?? "");
      }
    }
    throw e;
  }
}

/** Removes everything of one attachment. Idempotent; returns the removed elements. */
export function removePortmap(a: MasqAttachment, table = DEFAULT_TABLE): Promise<NftElement[]> {
  return portmapSets.remove(a, table);
}

/** GC: removes the elements of `network` whose attachment is not in `valid`. */
export function gcPortmap(network: string, valid: MasqAttachment[], table = DEFAULT_TABLE): Promise<NftElement[]> {
  return portmapSets.gc(network, valid, table);
}

/** The attachment's elements as the kernel holds them (for CHECK and tests). */
export function portmapOf(a: MasqAttachment, table = DEFAULT_TABLE): Promise<NftElement[]> {
  return portmapSets.of(a, table);
}

/** The entries whose elements are missing from `held` (empty when all are installed). */
export function missingEntries(entries: PortmapEntry[], opts: PortmapOptions, held: NftElement[]): PortmapEntry[] {
  const have = new Set(held.map((e) => `${e.set} ${e.key} ${e.value ?? ""}`));
  return entries.filter((entry) => elementsOf(entry, opts).some((el) => !have.has(`${el.set} ${el.key} ${el.value ?? ""}`)));
}
