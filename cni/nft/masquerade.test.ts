import { afterEach, describe, expect, it } from "vitest";
import { sh, testPrefix } from "../../testing/kernel.ts";
import { addMasquerade, deleteTable, gcMasquerade, masqueradeOf, networkChain, removeMasquerade } from "./masquerade.ts";

const tables: string[] = [];
function table(): string {
  const t = testPrefix();
  tables.push(t);
  return t;
}

afterEach(async () => {
  for (const t of tables.splice(0)) await deleteTable(t);
});

/** The ruleset as the kernel holds it, in nft's own text form. */
function ruleset(t: string): string {
  return sh("nft", ["list", "table", "inet", t]);
}

describe("ipMasq in berth's nftables table", () => {
  it("adds one map element per address and a masquerade chain excluding the pod subnet", async () => {
    const t = table();
    const a = { network: "net1", containerId: "c1", ifname: "eth0" };
    await addMasquerade(a, ["10.1.0.5/24", "fd00:1::5/64"], t);
    const text = ruleset(t);
    expect(text).toMatch(/10\.1\.0\.5 comment "[0-9a-f]{12} [0-9a-f]{20}" : jump n_[0-9a-f]{12}_masq/);
    expect(text).toMatch(/fd00:1::5 comment/);
    expect(text).toContain("ip daddr 10.1.0.0/24 return");
    expect(text).toContain("ip6 daddr fd00:1::/64 return");
    expect(text).toContain("masquerade");
    expect(text).toContain("ip saddr vmap @masq4");
    expect(await masqueradeOf(a, t)).toEqual(["10.1.0.5", "fd00:1::5"]);
  });

  it("repeated adds do not duplicate rules; delete is idempotent", async () => {
    const t = table();
    const a = { network: "net1", containerId: "c1", ifname: "eth0" };
    await addMasquerade(a, ["10.1.0.5/24"], t);
    await addMasquerade({ ...a, containerId: "c2" }, ["10.1.0.6/24"], t);
    const text = ruleset(t);
    expect(text.match(/ip saddr vmap @masq4/g)).toHaveLength(1);
    expect(text.match(/masquerade/g)).toHaveLength(1);
    await removeMasquerade(a, ["10.1.0.5/24"], t);
    await removeMasquerade(a, ["10.1.0.5/24"], t);
    const after = ruleset(t);
    expect(after).not.toContain("10.1.0.5");
    expect(after).toContain("10.1.0.6");
  });

  it("GC drops elements of attachments that are not valid, only for its network", async () => {
    const t = table();
    await addMasquerade({ network: "net1", containerId: "keep", ifname: "eth0" }, ["10.1.0.5/24"], t);
    await addMasquerade({ network: "net1", containerId: "gone", ifname: "eth0" }, ["10.1.0.6/24"], t);
    await addMasquerade({ network: "other", containerId: "x", ifname: "eth0" }, ["10.2.0.6/24"], t);
    const dropped = await gcMasquerade("net1", [{ network: "net1", containerId: "keep", ifname: "eth0" }], [], t);
    expect(dropped).toBe(1);
    const text = ruleset(t);
    expect(text).toContain("10.1.0.5");
    expect(text).not.toContain("10.1.0.6");
    expect(text).toContain("10.2.0.6");
    expect(text).toContain(networkChain("other"));
  });
});
