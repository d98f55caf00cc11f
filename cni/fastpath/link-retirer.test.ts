// How the agent's DEL takes a veth out of service (down, off its bridge, renamed bz<hex>) and
// deletes it in the background, read back from the kernel.
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from "vitest";
import { Rtnl } from "../../native/netlink/socket.ts";
import { ipJson, testPrefix } from "../../testing/kernel.ts";
import { type ScratchNetns, scratchNetns } from "../../testing/scratch-netns.ts";
import { retiredAlias } from "../plugins/link-names.ts";
import { deleteRetiredLinks, retireLinkIfPresent, takeOutOfService } from "../plugins/link-removal.ts";
import { createLinkRetirer } from "./link-retirer.ts";

let prefix: string;
let pod: ScratchNetns;

beforeEach(() => {
  prefix = testPrefix();
  pod = scratchNetns(`${prefix}-p`);
});

afterEach(() => {
  pod?.close();
});

function byIndex(index: number, ns?: string) {
  return ipJson(["link", "show"], ns).find((l) => l.ifindex === index);
}

describe("takeOutOfService", () => {
  for (const inline of [true, false]) {
    it(`downs a bridge port, detaches and renames it in one batch (${inline ? "on this thread" : "on the pool"})`, async () => {
      const nl = Rtnl.open(pod.ns, { shortRequestsInline: () => inline });
      onTestFinished(() => nl.close());
      const br = nl.linkAdd({ kind: "bridge", name: "br0", up: true })!;
      nl.linkAdd({ kind: "veth", name: "h0", master: br.index, up: true, peer: { name: "c0" } });
      const index = ipJson(["link", "show", "dev", "h0"], pod.name)[0].ifindex as number;
      expect(byIndex(index, pod.name)).toMatchObject({ master: "br0" });

      await takeOutOfService(nl, index, { detach: true });
      const after = byIndex(index, pod.name);
      expect(after.ifname).toMatch(/^bz[0-9a-f]{8}$/);
      expect(after.master).toBeUndefined();
      expect(after.flags).not.toContain("UP");
      expect(ipJson(["link", "show", "master", "br0"], pod.name)).toEqual([]);
      // The name is free for the next ADD at once.
      nl.linkAdd({ kind: "veth", name: "h0", peer: { name: "c1" } });
      expect(ipJson(["link", "show", "dev", "h0"], pod.name)).toHaveLength(1);
    });
  }

  it("with an alias, the retired link carries it (read back by ip and by the codec); deleteRetiredLinks finds it", async () => {
    const nl = pod.rtnl;
    nl.linkAdd({ kind: "veth", name: "h0", peer: { name: "c0" } });
    const index = nl.linkIndex("h0");
    await takeOutOfService(nl, index, { alias: retiredAlias("h0") });
    expect(byIndex(index, pod.name)).toMatchObject({ ifalias: "berth-retired:h0" });
    expect(nl.linkGet(index)?.alias).toBe("berth-retired:h0");
    expect(await deleteRetiredLinks(nl, (was) => was === "other")).toBe(0);
    expect(await deleteRetiredLinks(nl, (was) => was === "h0")).toBe(1);
    expect(byIndex(index, pod.name)).toBeUndefined();
  });

  it("a link that is gone is ENODEV (the DEL treats it as already removed)", async () => {
    await expect(takeOutOfService(pod.rtnl, 999_999)).rejects.toMatchObject({ code: "ENODEV" });
  });
});

describe("createLinkRetirer", () => {
  it("retireLinkIfPresent through it frees the host name at once and deletes the link in the background", async () => {
    const host = Rtnl.open();
    const name = `${prefix}h`;
    const retirement = createLinkRetirer();
    try {
      host.linkAdd({ kind: "veth", name, up: true, peer: { name: "eth0", netns: pod.ns } });
      const index = ipJson(["link", "show", "dev", name])[0].ifindex as number;
      expect(await retireLinkIfPresent(host, name, retirement.retire)).toBe(true);
      expect(ipJson(["link", "show"]).some((l) => l.ifname === name)).toBe(false);
      expect(await retireLinkIfPresent(host, name, retirement.retire)).toBe(false);
      await retirement.close(); // waits for the background deletes
      expect(byIndex(index)).toBeUndefined();
      expect(ipJson(["link", "show"], pod.name).map((l) => l.ifname)).toEqual(["lo"]); // the pair went whole
    } finally {
      await retirement.close();
      try {
        host.linkDel(name);
      } catch {
        // deleted by the retirer, as it should be
      }
      host.close();
    }
  });
});
