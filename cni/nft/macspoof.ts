// bridge's macspoofchk in berth's nftables table (bridge family): frames entering the bridge
// from a pod's host veth must carry the pod's MAC.
//   map spoofports { host veth name : jump <port chain> }
//   chain prerouting (filter)   iifname vmap @spoofports
//   chain ms_<port>             ether saddr != <pod MAC> drop
import { checkTableName, DEFAULT_TABLE, nftApply, nftList } from "./nft.ts";

function base(table: string): string[] {
  return [
    `add table bridge ${table}`,
    `add map bridge ${table} spoofports { type ifname : verdict; }`,
    `add chain bridge ${table} prerouting { type filter hook prerouting priority filter; policy accept; }`,
    `flush chain bridge ${table} prerouting`,
    `add rule bridge ${table} prerouting iifname vmap @spoofports`,
  ];
}

function portChain(hostIf: string): string {
  return `ms_${hostIf}`;
}

function checkIfname(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new Error(`invalid interface name "${name}"`);
  return name;
}

export async function addMacSpoofCheck(hostIf: string, mac: string, table = DEFAULT_TABLE): Promise<void> {
  checkTableName(table);
  checkIfname(hostIf);
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac)) throw new Error(`invalid MAC "${mac}"`);
  const chain = portChain(hostIf);
  await nftApply(
    `${[
      ...base(table),
      `add chain bridge ${table} ${chain}`,
      `flush chain bridge ${table} ${chain}`,
      `add rule bridge ${table} ${chain} ether saddr != ${mac.toLowerCase()} drop`,
      `add element bridge ${table} spoofports { "${hostIf}" : jump ${chain} }`,
    ].join("\n")}\n`,
  );
}

/** Idempotent: adds then deletes the element and the port chain in one transaction. */
export async function removeMacSpoofCheck(hostIf: string, table = DEFAULT_TABLE): Promise<void> {
  checkTableName(table);
  checkIfname(hostIf);
  const chain = portChain(hostIf);
  await nftApply(
    `${[
      ...base(table),
      `add chain bridge ${table} ${chain}`,
      `add element bridge ${table} spoofports { "${hostIf}" : jump ${chain} }`,
      `delete element bridge ${table} spoofports { "${hostIf}" }`,
      `delete chain bridge ${table} ${chain}`,
    ].join("\n")}\n`,
  );
}

/** Host interfaces that have a spoof check (for CHECK and GC). */
export async function macSpoofPorts(table = DEFAULT_TABLE): Promise<string[]> {
  checkTableName(table);
  const objs = await nftList(["list", "map", "bridge", table, "spoofports"]);
  const out: string[] = [];
  for (const o of objs ?? []) {
    const m = o.map as { elem?: [unknown, unknown][] } | undefined;
    for (const [k] of m?.elem ?? []) if (typeof k === "string") out.push(k);
  }
  return out;
}

export async function deleteBridgeTable(table: string): Promise<void> {
  checkTableName(table);
  await nftApply(`add table bridge ${table}\ndelete table bridge ${table}\n`);
}
