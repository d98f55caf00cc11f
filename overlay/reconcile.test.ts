// The pure desired-vs-actual diff, and the reconcile loop over an in-memory dataplane
// (the kernel-backed dataplane is tested in vxlan.test.ts).

import { describe, expect, it } from "vitest";
import { Subnet } from "../cni/address/address.ts";
import {
  type Dataplane,
  type DataplaneOp,
  type DataplaneState,
  desiredState,
  diffDataplane,
  type Peer,
  Reconciler,
} from "./reconcile.ts";

const peer = (n: number, mac = `02:00:00:00:00:0${n}`, publicIP = `192.0.2.${n}`): Peer => ({
  key: `/p/subnets/10.244.${n}.0-24`,
  subnet: Subnet.parse(`10.244.${n}.0/24`),
  subnetV6: Subnet.parse(`fd00:0:0:${n}::/64`),
  publicIP,
  vtepMAC: mac,
});

const empty = (): DataplaneState => ({ neighbours: [], fdb: [], routes: [] });

/** Applies ops to a state the way the kernel would (replace = upsert by key). */
function applyOps(state: DataplaneState, ops: DataplaneOp[]): DataplaneState {
  const s = structuredClone(state);
  for (const o of ops) {
    switch (o.op) {
      case "neigh-replace":
        s.neighbours = [...s.neighbours.filter((n) => n.ip !== o.ip), { ip: o.ip, mac: o.mac }];
        break;
      case "neigh-del":
        s.neighbours = s.neighbours.filter((n) => n.ip !== o.ip);
        break;
      case "fdb-replace":
        s.fdb = [...s.fdb.filter((f) => f.mac !== o.mac), { mac: o.mac, dst: o.dst }];
        break;
      case "fdb-del":
        s.fdb = s.fdb.filter((f) => !(f.mac === o.mac && f.dst === o.dst));
        break;
      case "route-replace":
        s.routes = [...s.routes.filter((r) => r.dst !== o.dst), { dst: o.dst, gateway: o.gateway }];
        break;
      case "route-del":
        s.routes = s.routes.filter((r) => r.dst !== o.dst);
        break;
    }
  }
  return s;
}

describe("desiredState", () => {
  it("gives one neighbour, one FDB entry and one route per peer", () => {
    const d = desiredState([peer(2), peer(3)], { ipv6: false });
    expect(d.neighbours).toEqual([
      { ip: "10.244.2.0", mac: "02:00:00:00:00:02" },
      { ip: "10.244.3.0", mac: "02:00:00:00:00:03" },
    ]);
    expect(d.fdb).toEqual([
      { mac: "02:00:00:00:00:02", dst: "192.0.2.2" },
      { mac: "02:00:00:00:00:03", dst: "192.0.2.3" },
    ]);
    expect(d.routes).toEqual([
      { dst: "10.244.2.0/24", gateway: "10.244.2.0" },
      { dst: "10.244.3.0/24", gateway: "10.244.3.0" },
    ]);
  });

  it("adds the IPv6 neighbour and route (one FDB entry still) when dual-stack", () => {
    const d = desiredState([peer(2)], { ipv6: true });
    expect(d.fdb).toHaveLength(1);
    expect(d.neighbours.map((n) => n.ip)).toEqual(["10.244.2.0", "fd00:0:0:2::"]);
    expect(d.routes).toContainEqual({ dst: "fd00:0:0:2::/64", gateway: "fd00:0:0:2::" });
  });

  it("is deterministic when two peers claim the same MAC", () => {
    const a = desiredState([peer(3, "02:00:00:00:00:aa"), peer(2, "02:00:00:00:00:aa")], { ipv6: false });
    const b = desiredState([peer(2, "02:00:00:00:00:aa"), peer(3, "02:00:00:00:00:aa")], { ipv6: false });
    expect(a).toEqual(b);
    expect(a.fdb).toEqual([{ mac: "02:00:00:00:00:aa", dst: "192.0.2.2" }]);
  });
});

describe("diffDataplane", () => {
  it("programs a new host: neighbour and FDB before the route", () => {
    const ops = diffDataplane(desiredState([peer(2)], { ipv6: false }), empty());
    expect(ops.map((o) => o.op)).toEqual(["neigh-replace", "fdb-replace", "route-replace"]);
  });

  it("does nothing when the kernel already matches (textual IPv6 forms may differ)", () => {
    const want = desiredState([peer(2), peer(3)], { ipv6: true });
    const have = structuredClone(want);
    have.neighbours[1]!.ip = "fd00:0000:0000:0002:0000:0000:0000:0000";
    have.fdb[0]!.mac = "02:00:00:00:00:02".toUpperCase();
    expect(diffDataplane(want, have)).toEqual([]);
  });

  it("removes a departed host: route first, then neighbour and FDB entry", () => {
    const have = desiredState([peer(2), peer(3)], { ipv6: false });
    const ops = diffDataplane(desiredState([peer(2)], { ipv6: false }), have);
    expect(ops).toEqual([
      { op: "route-del", dst: "10.244.3.0/24", gateway: "10.244.3.0" },
      { op: "neigh-del", ip: "10.244.3.0", mac: "02:00:00:00:00:03" },
      { op: "fdb-del", mac: "02:00:00:00:00:03", dst: "192.0.2.3" },
    ]);
  });

  it("on a MAC change replaces the neighbour, adds the new FDB entry and removes the stale one (flannel#1795)", () => {
    const have = desiredState([peer(2)], { ipv6: false });
    const ops = diffDataplane(desiredState([peer(2, "02:00:00:00:00:99")], { ipv6: false }), have);
    expect(ops).toEqual([
      { op: "neigh-replace", ip: "10.244.2.0", mac: "02:00:00:00:00:99" },
      { op: "fdb-replace", mac: "02:00:00:00:00:99", dst: "192.0.2.2" },
      { op: "fdb-del", mac: "02:00:00:00:00:02", dst: "192.0.2.2" },
    ]);
  });

  it("on a public IP change replaces only the FDB entry", () => {
    const have = desiredState([peer(2)], { ipv6: false });
    const ops = diffDataplane(desiredState([peer(2, undefined, "198.51.100.2")], { ipv6: false }), have);
    expect(ops).toEqual([{ op: "fdb-replace", mac: "02:00:00:00:00:02", dst: "198.51.100.2" }]);
  });

  it("repairs drift: a wrong route gateway, a missing FDB entry, an extra destination", () => {
    const want = desiredState([peer(2)], { ipv6: false });
    const have: DataplaneState = {
      neighbours: want.neighbours,
      fdb: [
        { mac: "02:00:00:00:00:02", dst: "192.0.2.2" },
        { mac: "02:00:00:00:00:02", dst: "192.0.2.77" },
      ],
      routes: [{ dst: "10.244.2.0/24", gateway: "10.244.2.1" }],
    };
    const ops = diffDataplane(want, have);
    expect(ops).toContainEqual({ op: "route-replace", dst: "10.244.2.0/24", gateway: "10.244.2.0" });
    expect(ops).toContainEqual({ op: "fdb-del", mac: "02:00:00:00:00:02", dst: "192.0.2.77" });
    expect(diffDataplane(want, applyOps(have, ops))).toEqual([]);
  });

  it("always converges: applying the diff leaves nothing to do", () => {
    const states = [[], [peer(2)], [peer(2), peer(3)], [peer(3, "02:00:00:00:00:33", "203.0.113.3")], [peer(4), peer(2)], []];
    let kernel = empty();
    for (const peers of states) {
      const want = desiredState(peers, { ipv6: true });
      kernel = applyOps(kernel, diffDataplane(want, kernel));
      expect(diffDataplane(want, kernel)).toEqual([]);
      expect(kernel.routes).toHaveLength(peers.length * 2);
    }
  });
});

class MemoryDataplane implements Dataplane {
  state = empty();
  applied: DataplaneOp[] = [];
  deviceGone = false;
  async ensureDevice(): Promise<boolean> {
    if (!this.deviceGone) return false;
    this.deviceGone = false;
    this.state = empty();
    return true;
  }
  async read(): Promise<DataplaneState> {
    return structuredClone(this.state);
  }
  async apply(op: DataplaneOp): Promise<void> {
    this.applied.push(op);
    this.state = applyOps(this.state, [op]);
  }
}

describe("Reconciler", () => {
  it("counts changes and drift repairs separately and re-lists without flapping", async () => {
    const dp = new MemoryDataplane();
    const r = new Reconciler(dp);
    r.setPeers([peer(2), peer(3)], { ipv6: false });
    await r.trigger();
    expect(r.stats).toMatchObject({ changes: 6, repairs: 0, converged: true });
    // Someone deletes an FDB entry by hand: the next run repairs it and counts a repair.
    dp.state.fdb = dp.state.fdb.filter((f) => f.mac !== "02:00:00:00:00:03");
    await r.trigger();
    expect(r.stats.repairs).toBe(1);
    // A re-list after a store outage with the same hosts (new objects): no kernel operation at all.
    dp.applied = [];
    r.setPeers([peer(3), peer(2)], { ipv6: false });
    await r.trigger();
    expect(dp.applied).toEqual([]);
    // The device was deleted: it is recreated and fully reprogrammed.
    dp.deviceGone = true;
    await r.trigger();
    expect(r.stats.deviceRecreations).toBe(1);
    expect(dp.state.routes).toHaveLength(2);
  });

  it("coalesces triggers that arrive during a run", async () => {
    const dp = new MemoryDataplane();
    const r = new Reconciler(dp);
    r.setPeers([peer(2)], { ipv6: false });
    const runs = [r.trigger(), r.trigger(), r.trigger()];
    await Promise.all(runs);
    expect(r.stats.runs).toBe(2);
    expect(dp.applied).toHaveLength(3);
  });

  it("reports failed operations and is not converged after them", async () => {
    const dp = new MemoryDataplane();
    dp.apply = async (op) => {
      if (op.op === "route-replace") throw new Error("ENETUNREACH");
      dp.state = applyOps(dp.state, [op]);
    };
    const errors: string[] = [];
    const r = new Reconciler(dp, { onOpError: (op, e) => errors.push(`${op.op}: ${(e as Error).message}`) });
    r.setPeers([peer(2)], { ipv6: false });
    await r.trigger();
    expect(errors).toEqual(["route-replace: ENETUNREACH"]);
    expect(r.stats).toMatchObject({ converged: false, failures: 1 });
    expect(r.stats.lastError).toMatch(/1 of 3/);
  });
});

describe("Reconciler before the first listing", () => {
  it("creates the device but deletes nothing while the peers are not known yet (restart with the store down)", async () => {
    const dp = new MemoryDataplane();
    dp.state = desiredState([peer(2), peer(3)], { ipv6: false });
    const r = new Reconciler(dp);
    r.upsertPeer(peer(4)); // a watch event cannot stand in for a listing
    await r.trigger();
    expect(dp.applied).toEqual([]);
    r.setPeers([peer(2), peer(3)], { ipv6: false });
    await r.trigger();
    expect(dp.applied).toEqual([]);
    expect(r.stats.converged).toBe(true);
  });
});
