// Vitest global setup: tags the run and, at the end, fails the run if any netns, link,
// loop device, mount or nftables table created by the tests (named bt<run>...) is still there.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";

export function leftovers(run: string): string[] {
  const tag = `bt${run}`;
  const found: string[] = [];
  let netns: string[] = [];
  try {
    netns = readdirSync("/run/netns");
  } catch {}
  for (const n of netns) if (n.startsWith(tag)) found.push(`netns ${n}`);
  const links = JSON.parse(execFileSync("ip", ["-j", "link", "show"], { encoding: "utf8" }) || "[]") as { ifname: string }[];
  for (const l of links) if (l.ifname.startsWith(tag)) found.push(`link ${l.ifname}`);
  const loops = JSON.parse(execFileSync("losetup", ["-J", "-l"], { encoding: "utf8" }) || '{"loopdevices":[]}') as {
    loopdevices: { name: string; "back-file": string | null }[];
  };
  for (const l of loops.loopdevices ?? [])
    if ((l["back-file"] ?? "").includes(tag)) found.push(`loop ${l.name} (${l["back-file"]})`);
  try {
    const tables = JSON.parse(execFileSync("nft", ["-j", "list", "tables"], { encoding: "utf8" })) as {
      nftables: { table?: { name: string } }[];
    };
    for (const t of tables.nftables) if (t.table?.name.startsWith(tag)) found.push(`nftables table ${t.table.name}`);
  } catch {
    // nft missing: nothing of ours can be there
  }
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const target = line.split(" ")[4];
    if (target?.includes(tag)) found.push(`mount ${target}`);
  }
  return found;
}

export default function setup() {
  const run = process.env.BERTH_TEST_RUN ?? randomBytes(2).toString("hex").slice(0, 3);
  process.env.BERTH_TEST_RUN = run;
  return () => {
    const left = leftovers(run);
    if (left.length > 0) {
      throw new Error(`the test run left kernel objects behind:\n  ${left.join("\n  ")}`);
    }
    console.log(`leak check: no netns, link, loop device or mount tagged bt${run} remains`);
  };
}
