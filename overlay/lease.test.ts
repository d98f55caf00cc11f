// Subnet leasing on a real embedded store: distinct subnets per host, restart keeps subnet and
// MAC, reservations are never handed out, expiry frees a subnet, dual-stack pairs subnets.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Subnet } from "../cni/address/address.ts";
import { LeaseError, networkConfig, parseLeaseValue, parseSubnetKey, SubnetLeaseManager, subnetKey } from "./lease.ts";
import { LocalStore } from "./store/local.ts";

const PREFIX = "/berth/network";
let dir: string;
let store: LocalStore;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "berth-lease-"));
  store = new LocalStore({ path: join(dir, "store.db") });
});

afterEach(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

function manager(
  host: string,
  publicIP: string,
  cidrs = ["10.244.0.0/16"],
  extra: { ttlSeconds?: number; subnetLen?: number } = {},
) {
  return new SubnetLeaseManager({
    store,
    prefix: PREFIX,
    network: networkConfig(cidrs, extra.subnetLen),
    stateDir: join(dir, host),
    publicIP,
    vni: 1,
    hostname: host,
    ttlSeconds: extra.ttlSeconds,
  });
}

describe("subnet keys", () => {
  it("round-trips flannel's key format, dual-stack included", () => {
    const v4 = Subnet.parse("10.244.3.0/24");
    const v6 = Subnet.parse("fd00:10:244:3::/64");
    expect(subnetKey(PREFIX, v4)).toBe("/berth/network/subnets/10.244.3.0-24");
    expect(subnetKey(PREFIX, v4, v6)).toBe("/berth/network/subnets/10.244.3.0-24&fd00:10:244:3::-64");
    const parsed = parseSubnetKey(PREFIX, subnetKey(PREFIX, v4, v6));
    expect(parsed && String(parsed.subnet)).toBe("10.244.3.0/24");
    expect(parsed?.subnetV6 && String(parsed.subnetV6)).toBe("fd00:10:244:3::/64");
    expect(parseSubnetKey(PREFIX, "/berth/network/subnets/garbage")).toBeNull();
    expect(parseSubnetKey(PREFIX, "/other/subnets/10.244.3.0-24")).toBeNull();
  });

  it("rejects lease values that are not well-formed", () => {
    expect(parseLeaseValue("not json")).toBeNull();
    expect(parseLeaseValue(JSON.stringify({ publicIP: "1.2.3", vtepMAC: "02:00:00:00:00:01", vni: 1 }))).toBeNull();
    expect(parseLeaseValue(JSON.stringify({ publicIP: "1.2.3.4", vtepMAC: "zz", vni: 1 }))).toBeNull();
    expect(parseLeaseValue(JSON.stringify({ publicIP: "1.2.3.4", vtepMAC: "02:00:00:00:00:01", vni: 1 }))).toMatchObject({
      publicIP: "1.2.3.4",
    });
  });

  it("names the problem in a bad network config", () => {
    expect(() => networkConfig([])).toThrow(LeaseError);
    expect(() => networkConfig(["10.244.0.0/16"], 12)).toThrow(/does not fit/);
    expect(() => networkConfig(["10.244.0.1/16"])).toThrow(/host bits/);
    expect(() => networkConfig(["10.244.0.0/16", "fd00::/60"])).toThrow(/fewer/);
    expect(networkConfig(["10.244.0.0/16"]).subnetLen).toBe(24);
    expect(networkConfig(["10.244.0.0/24"]).subnetLen).toBe(26);
  });
});

describe("SubnetLeaseManager", () => {
  it("gives two hosts distinct subnets inside the network (never the first one)", async () => {
    const a = await manager("a", "192.0.2.1").acquire();
    const b = await manager("b", "192.0.2.2").acquire();
    expect(String(a.subnet)).not.toBe(String(b.subnet));
    for (const l of [a, b]) {
      expect(String(l.subnet)).toMatch(/^10\.244\.\d+\.0\/24$/);
      expect(String(l.subnet)).not.toBe("10.244.0.0/24");
      expect(l.leaseId).not.toBeNull();
    }
    // What the store holds, read back.
    const { entries } = await store.list(`${PREFIX}/subnets/`);
    expect(entries.map((e) => e.key).sort()).toEqual([a.key, b.key].sort());
    expect(JSON.parse(entries.find((e) => e.key === a.key)!.value)).toMatchObject({
      publicIP: "192.0.2.1",
      vni: 1,
      hostname: "a",
    });
  });

  it("hands out every subnet exactly once and then says the network is full", async () => {
    const cidrs = ["10.9.0.0/28"]; // /30 subnets: 4, of which 3 usable
    const got = [];
    for (let i = 1; i <= 3; i++) got.push(String((await manager(`h${i}`, `192.0.2.${i}`, cidrs).acquire()).subnet));
    expect(new Set(got).size).toBe(3);
    await expect(manager("h4", "192.0.2.4", cidrs).acquire()).rejects.toThrow(/no free subnet left in 10.9.0.0\/28/);
  });

  it("gets the same subnet and VTEP MAC back after a restart, with the lease taken over", async () => {
    const first = manager("a", "192.0.2.1");
    const lease = await first.acquire();
    const again = manager("a", "192.0.2.1");
    expect(again.vtepMAC).toBe(first.vtepMAC);
    const second = await again.acquire();
    expect(String(second.subnet)).toBe(String(lease.subnet));
    expect(second.value.vtepMAC).toBe(first.vtepMAC);
    expect(second.leaseId).not.toBe(lease.leaseId);
    expect((await store.get(lease.key))?.leaseId).toBe(second.leaseId);
    expect((await store.list(`${PREFIX}/subnets/`)).entries).toHaveLength(1);
  });

  it("finds its own lease by host identity even when the public IP changed", async () => {
    const lease = await manager("a", "192.0.2.1").acquire();
    const moved = await manager("a", "192.0.2.99").acquire();
    expect(moved.key).toBe(lease.key);
    expect(moved.value.publicIP).toBe("192.0.2.99");
  });

  it("gets its last subnet back after the lease expired, if still free", async () => {
    const m = manager("a", "192.0.2.1", undefined, { ttlSeconds: 1 });
    const lease = await m.acquire();
    await new Promise((r) => setTimeout(r, 1300));
    expect(await store.get(lease.key)).toBeNull();
    const back = await manager("a", "192.0.2.1").acquire();
    expect(back.key).toBe(lease.key);
  });

  it("never hands out a reservation to another host, but lets the reserved host take it", async () => {
    // Reserve every subnet but one; the remaining one must be what a new host gets.
    const cidrs = ["10.9.0.0/28"];
    const n = networkConfig(cidrs);
    const reserve = async (subnet: string, publicIP: string) =>
      store.create(
        subnetKey(PREFIX, Subnet.parse(subnet)),
        JSON.stringify({ publicIP, vtepMAC: "02:00:00:00:00:09", vni: 1, hostname: "reserved" }),
        null,
      );
    expect(n.subnetLen).toBe(30);
    await reserve("10.9.0.4/30", "192.0.2.50");
    await reserve("10.9.0.8/30", "192.0.2.51");
    const other = await manager("x", "192.0.2.7", cidrs).acquire();
    expect(String(other.subnet)).toBe("10.9.0.12/30");
    const owner = await manager("r", "192.0.2.50", cidrs).acquire();
    expect(String(owner.subnet)).toBe("10.9.0.4/30");
    expect(owner.leaseId).toBeNull();
    const entry = await store.get(owner.key);
    expect(entry?.leaseId).toBeNull();
    expect(JSON.parse(entry!.value).hostname).toBe("r");
  });

  it("frees a subnet when its lease expires, and renew() re-acquires a lost lease", async () => {
    const cidrs = ["10.9.0.0/28"]; // two /29s, one usable
    const a = manager("a", "192.0.2.1", cidrs, { ttlSeconds: 1, subnetLen: 29 });
    const leaseA = await a.acquire();
    await expect(manager("b", "192.0.2.2", cidrs, { subnetLen: 29 }).acquire()).rejects.toThrow(LeaseError);
    await new Promise((r) => setTimeout(r, 1300));
    const b = await manager("b", "192.0.2.2", cidrs, { subnetLen: 29 }).acquire();
    expect(b.key).toBe(leaseA.key);
    // a's lease is gone and its subnet taken: renew() reports that no subnet is left.
    await expect(a.renew()).rejects.toThrow(/no free subnet/);
  });

  it("renew() keeps a live lease alive and re-creates a deleted key", async () => {
    const m = manager("a", "192.0.2.1");
    const lease = await m.acquire();
    expect((await m.renew()).leaseId).toBe(lease.leaseId);
    await store.delete(lease.key);
    const again = await m.renew();
    expect(again.key).toBe(lease.key);
    expect(await store.get(lease.key)).not.toBeNull();
  });

  it("pairs the IPv6 subnet with the IPv4 one by index (dual-stack)", async () => {
    const lease = await manager("a", "192.0.2.1", ["10.244.0.0/16", "fd00:10:244::/48"]).acquire();
    const third = String(lease.subnet).split(".")[2];
    expect(String(lease.subnetV6!)).toBe(`fd00:10:244:${Number(third).toString(16)}::/64`);
    expect(lease.key).toContain("&fd00:10:244:");
  });
});
