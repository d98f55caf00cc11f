import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { sh, testPrefix } from "../../testing/kernel.ts";
import { type ScratchNetns, scratchNetns } from "../../testing/scratch-netns.ts";
import { type RtnlEvent, subscribeEvents } from "./events.ts";

let a: ScratchNetns;

beforeEach(() => {
  a = scratchNetns(`${testPrefix()}-e`);
});

afterEach(() => a?.close());

/** Resolves once `pred` matches an event seen so far (or rejects after `ms`). */
function waitFor(events: RtnlEvent[], pred: (e: RtnlEvent) => boolean, ms = 5000): Promise<RtnlEvent> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      const hit = events.find(pred);
      if (hit) return resolve(hit);
      if (Date.now() - started > ms) return reject(new Error(`no matching event in ${ms} ms (saw ${events.length} others)`));
      setTimeout(tick, 5);
    };
    tick();
  });
}

describe("subscribeEvents", () => {
  it("sees newlink and dellink for a link made by another process in the namespace", async () => {
    const events: RtnlEvent[] = [];
    const sub = subscribeEvents(a.name, ["link"], (e) => events.push(e));
    try {
      // Made with iproute2, not with our API: the events must come from the kernel.
      sh("ip", ["-n", a.name, "link", "add", "evbr", "type", "bridge"]);
      const added = await waitFor(events, (e) => e.type === "newlink" && e.link.name === "evbr");
      expect(added).toMatchObject({ type: "newlink", link: { name: "evbr", kind: "bridge" } });
      sh("ip", ["-n", a.name, "link", "del", "evbr"]);
      await waitFor(events, (e) => e.type === "dellink" && e.link.name === "evbr");
    } finally {
      sub.close();
    }
  });

  it("decodes address, route and neighbour events and stops after close", async () => {
    const events: RtnlEvent[] = [];
    const sub = subscribeEvents(a.ns, ["ipv4-addr", "ipv6-addr", "ipv4-route", "neigh"], (e) => events.push(e));
    a.rtnl.linkAdd({ kind: "veth", name: "ev0", peer: { name: "ev0b" }, up: true });
    a.rtnl.addrAdd("ev0", "10.77.0.1/24");
    a.rtnl.addrAdd("ev0", { cidr: "fd77::1/64", nodad: true });
    a.rtnl.routeAdd({ dst: "10.78.0.0/24", gateway: "10.77.0.2" });
    a.rtnl.neighAdd({ dev: "ev0", dst: "10.77.0.9", lladdr: "02:00:00:00:77:09" });
    await waitFor(events, (e) => e.type === "newaddr" && e.addr.cidr === "10.77.0.1/24");
    await waitFor(events, (e) => e.type === "newaddr" && e.addr.cidr === "fd77::1/64");
    await waitFor(events, (e) => e.type === "newroute" && e.route.dst === "10.78.0.0/24" && e.route.gateway === "10.77.0.2");
    await waitFor(events, (e) => e.type === "newneigh" && e.neigh?.dst === "10.77.0.9");
    a.rtnl.addrDel("ev0", "10.77.0.1/24");
    await waitFor(events, (e) => e.type === "deladdr" && e.addr.address === "10.77.0.1");
    // No link group: no link events.
    expect(events.some((e) => e.type === "newlink")).toBe(false);
    sub.close();
    const seen = events.length;
    a.rtnl.addrAdd("ev0", "10.79.0.1/24");
    await new Promise((r) => setTimeout(r, 50));
    expect(events.length).toBe(seen);
  });

  it("reports an overflow (ENOBUFS) when events outrun the socket buffer, then keeps delivering", async () => {
    const events: RtnlEvent[] = [];
    let overflows = 0;
    const sub = subscribeEvents(
      a.name,
      ["ipv4-addr"],
      (e) => events.push(e),
      () => overflows++,
    );
    try {
      a.rtnl.linkAdd({ kind: "veth", name: "of0", peer: { name: "of0b" } });
      // Synchronous: the event loop cannot drain the socket until this loop ends.
      for (let i = 0; i < 12000; i++) a.rtnl.addrAdd("of0", `10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`);
      await new Promise((r) => setTimeout(r, 100));
      expect(overflows).toBeGreaterThan(0);
      expect(events.length).toBeLessThan(12000);
      a.rtnl.addrAdd("of0", "10.250.0.1/32");
      await waitFor(events, (e) => e.type === "newaddr" && e.addr.address === "10.250.0.1");
    } finally {
      sub.close();
    }
  });

  it("an unknown group or namespace is a clear error", () => {
    // biome-ignore lint/suspicious/noExplicitAny: a caller bypassing the types
    expect(() => subscribeEvents(a.ns, ["links" as any], () => {})).toThrow('unknown event group "links"');
    expect(() => subscribeEvents(`${a.name}-gone`, ["link"], () => {})).toThrow("does not exist");
  });
});
