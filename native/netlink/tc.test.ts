// Traffic control over netlink: codec byte layout and round trips (no kernel), then qdiscs and
// filters programmed in a throwaway netns and read back with `tc -j` and `ip -j -s`.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { addNetns, delNetns, ipJson, sh, testPrefix } from "../../testing/kernel.ts";
import { type ScratchNetns, scratchNetns } from "../../testing/scratch-netns.ts";
import { Netns } from "../netns.ts";
import { forEachMessage, InvalidValueError, type MessageView, MessageWriter, NLMSG_HDRLEN } from "./codec.ts";
import { RTM_NEWQDISC, RTM_NEWTFILTER } from "./constants.ts";
import { isNetlinkError, NetlinkError } from "./error.ts";
import {
  bytesToTicks,
  decodeFilter,
  decodeQdisc,
  ETH_P_ALL,
  encodeFilter,
  encodeQdisc,
  type FilterSpec,
  formatHandle,
  INGRESS_HANDLE,
  type QdiscSpec,
  TC_H_INGRESS,
  TC_H_ROOT,
  TCMSG_LEN,
  tbfLimit,
  ticksToBytes,
  U32_MATCH_ALL_HANDLE,
} from "./tc.ts";

function oneMessage(type: number, encode: (w: MessageWriter) => void): MessageView {
  const w = new MessageWriter().begin(type, 0);
  encode(w);
  const buf = Buffer.from(w.finish(1));
  let view: MessageView | undefined;
  forEachMessage(buf, (m) => {
    view = m;
  });
  return view as MessageView;
}

/** Attribute (type, payload) pairs at one level, as the kernel's parser would see them. */
function attrs(buf: Buffer, start: number, end: number): [number, Buffer][] {
  const out: [number, Buffer][] = [];
  for (let off = start; off + 4 <= end; off += (buf.readUInt16LE(off) + 3) & ~3) {
    out.push([buf.readUInt16LE(off + 2), buf.subarray(off + 4, off + buf.readUInt16LE(off))]);
  }
  return out;
}

describe("tc codec", () => {
  it("encodes a tbf as iproute2 does: tcmsg, kind, PARMS with an Ethernet-aware rate, limit from latency, BURST", () => {
    const m = oneMessage(RTM_NEWQDISC, (w) =>
      encodeQdisc(w, 7, { kind: "tbf", dev: 7, bytesPerSec: 5_000_000, burstBytes: 50_000 }),
    );
    const b = m.buf;
    const h = m.payload;
    expect(h).toBe(NLMSG_HDRLEN);
    expect(b.readInt32LE(h + 4)).toBe(7); // ifindex
    expect(b.readUInt32LE(h + 8)).toBe(0x10000); // handle 1:
    expect(b.readUInt32LE(h + 12)).toBe(TC_H_ROOT);
    const top = attrs(b, h + TCMSG_LEN, m.end);
    expect(top.map(([t]) => t)).toEqual([1, 2]); // TCA_KIND, TCA_OPTIONS (no NLA_F_NESTED, as tc)
    expect(top[0]![1].toString()).toBe("tbf\0");
    const opts = top[1]![1];
    const inner = attrs(opts, 0, opts.length);
    expect(inner.map(([t]) => t)).toEqual([1, 6]); // PARMS, BURST; no RATE64 below 2^32
    const q = inner[0]![1];
    expect(q.length).toBe(36);
    expect(q[1]).toBe(1); // TC_LINKLAYER_ETHERNET: no rate table needed
    expect(q.readUInt32LE(8)).toBe(5_000_000);
    expect(q.subarray(12, 24).every((x) => x === 0)).toBe(true); // no peak rate
    expect(q.readUInt32LE(24)).toBe(5_000_000 * 0.025 + 50_000); // tc's limit for latency 25ms
    expect(q.readUInt32LE(28)).toBe(156_250); // 10 ms in 64 ns ticks
    expect(inner[1]![1].readUInt32LE(0)).toBe(50_000);
  });

  it("puts rates of 2^32 bytes/s and more in TCA_TBF_RATE64 and saturates the 32-bit field", () => {
    const m = oneMessage(RTM_NEWQDISC, (w) =>
      encodeQdisc(w, 3, { kind: "tbf", dev: 3, bytesPerSec: 2 ** 32 + 5, burstBytes: 1_000_000, limitBytes: 4096 }),
    );
    const opts = attrs(m.buf, m.payload + TCMSG_LEN, m.end)[1]![1];
    const inner = new Map(attrs(opts, 0, opts.length));
    expect(inner.get(1)!.readUInt32LE(8)).toBe(0xffffffff);
    expect(inner.get(1)!.readUInt32LE(24)).toBe(4096);
    expect(inner.get(4)!.readBigUInt64LE(0)).toBe(2n ** 32n + 5n);
    const q = decodeQdisc(m);
    expect(q.tbf?.bytesPerSec).toBe(2 ** 32 + 5);
  });

  it("round-trips qdiscs through decodeQdisc", () => {
    const tbf = decodeQdisc(
      oneMessage(RTM_NEWQDISC, (w) =>
        encodeQdisc(w, 9, { kind: "tbf", dev: 9, handle: 0x20000, bytesPerSec: 1_250_000, burstBytes: 20_000 }),
      ),
    );
    expect(tbf).toEqual({
      ifindex: 9,
      kind: "tbf",
      handle: 0x20000,
      parent: TC_H_ROOT,
      tbf: { bytesPerSec: 1_250_000, burstBytes: 20_000, limitBytes: 51_250, bufferTicks: 250_000 },
    });
    const ingress = decodeQdisc(oneMessage(RTM_NEWQDISC, (w) => encodeQdisc(w, 9, { kind: "ingress", dev: 9 })));
    expect(ingress).toEqual({ ifindex: 9, kind: "ingress", handle: INGRESS_HANDLE, parent: TC_H_INGRESS });
  });

  it("encodes u32 match-all and matchall filters with mirred and decodes them back", () => {
    const spec: FilterSpec = {
      kind: "u32",
      dev: 4,
      parent: "ingress",
      actions: [
        { kind: "mirred", mode: "redirect", dev: 11 },
        { kind: "mirred", mode: "mirror", direction: "ingress", dev: 12 },
      ],
    };
    const m = oneMessage(RTM_NEWTFILTER, (w) => encodeFilter(w, 4, spec, [11, 12]));
    // tcm_info = TC_H_MAKE(1 << 16, htons(ETH_P_ALL))
    expect(m.buf.readUInt32LE(m.payload + 16)).toBe(0x00010300);
    expect(decodeFilter(m)).toEqual({
      ifindex: 4,
      kind: "u32",
      parent: INGRESS_HANDLE,
      handle: U32_MATCH_ALL_HANDLE,
      prio: 1,
      protocol: ETH_P_ALL,
      actions: [
        { kind: "mirred", mode: "redirect", direction: "egress", ifindex: 11 },
        { kind: "mirred", mode: "mirror", direction: "ingress", ifindex: 12 },
      ],
    });
    const mall = decodeFilter(
      oneMessage(RTM_NEWTFILTER, (w) =>
        encodeFilter(w, 4, { ...spec, kind: "matchall", prio: 7, protocol: 0x0800, actions: spec.actions.slice(0, 1) }, [11]),
      ),
    );
    expect(mall).toMatchObject({ kind: "matchall", handle: 1, prio: 7, protocol: 0x0800 });
    expect(mall.actions).toEqual([{ kind: "mirred", mode: "redirect", direction: "egress", ifindex: 11 }]);
  });

  it.each<[string, () => void, RegExp]>([
    ["rate 0", () => encodeQdisc(new MessageWriter(), 1, { kind: "tbf", dev: 1, bytesPerSec: 0, burstBytes: 1 }), /tbf rate/],
    [
      "burst 2^32",
      () => encodeQdisc(new MessageWriter(), 1, { kind: "tbf", dev: 1, bytesPerSec: 1, burstBytes: 2 ** 32 }),
      /tbf burst/,
    ],
    [
      "fractional rate",
      () => encodeQdisc(new MessageWriter(), 1, { kind: "tbf", dev: 1, bytesPerSec: 1.5, burstBytes: 1 }),
      /tbf rate/,
    ],
    // biome-ignore lint/suspicious/noExplicitAny: a caller bypassing the types
    ["unknown qdisc", () => encodeQdisc(new MessageWriter(), 1, { kind: "htb", dev: 1 } as any), /unsupported qdisc kind "htb"/],
    [
      "no actions",
      () => encodeFilter(new MessageWriter(), 1, { kind: "u32", dev: 1, parent: "ingress", actions: [] }, []),
      /at least one action/,
    ],
    [
      "prio 0",
      () => encodeFilter(new MessageWriter(), 1, { kind: "u32", dev: 1, parent: "ingress", prio: 0, actions: [] }, []),
      /filter prio must be an integer 1\.\.65535/,
    ],
  ])("refuses %s with InvalidValueError", (_, f, msg) => {
    expect(f).toThrow(InvalidValueError);
    expect(f).toThrow(msg);
  });

  it("computes limits, ticks and handles as tc does", () => {
    expect(tbfLimit(5_000_000, 50_000, 25_000)).toBe(175_000);
    expect(tbfLimit(2 ** 40, 1, 25_000_000)).toBe(0xffffffff);
    expect(bytesToTicks(6_000_000, 60_000)).toBe(156_250);
    expect(ticksToBytes(6_000_000, 156_249)).toBe(59_999);
    expect([TC_H_ROOT, TC_H_INGRESS, 0x10000, INGRESS_HANDLE, 0x1000a].map(formatHandle)).toEqual([
      "root",
      "ingress",
      "1:",
      "ffff:",
      "1:a",
    ]);
  });
});

// ---------------------------------------------------------------- kernel

describe("in the kernel", () => {
  let a: ScratchNetns;
  let peerNs: string;

  beforeEach(() => {
    const prefix = testPrefix();
    a = scratchNetns(`${prefix}-t`);
    peerNs = `${prefix}-p`;
    addNetns(peerNs);
    const peer = Netns.open(peerNs);
    try {
      a.rtnl.linkAdd({ kind: "veth", name: "h0", peer: { name: "p0", netns: peer }, up: true });
    } finally {
      peer.close();
    }
    a.rtnl.linkAdd({ kind: "ifb", name: "ifb0", mtu: 1500, up: true });
  });

  afterEach(() => {
    a?.close();
    delNetns(peerNs);
  });

  // biome-ignore lint/suspicious/noExplicitAny: tc JSON
  function tcJson(args: string[]): any[] {
    const out = sh("tc", ["-n", a.name, "-j", ...args]).trim();
    return out ? JSON.parse(out) : [];
  }

  /** What `tc` prints as burst: the bucket time truncated to whole microseconds, times the rate. */
  function tcBurst(bytesPerSec: number, ticks: number): number {
    return Math.trunc((bytesPerSec * Math.trunc(ticks / (1000 / 64))) / 1e6);
  }

  describe("qdiscs in the kernel", () => {
    it("replaces a tbf on the root (idempotent, updates in place) and reads it back like tc", () => {
      const spec: QdiscSpec = { kind: "tbf", dev: "h0", bytesPerSec: 5_000_000, burstBytes: 50_000 };
      a.rtnl.qdiscReplace(spec);
      a.rtnl.qdiscReplace(spec);
      let theirs = tcJson(["qdisc", "show", "dev", "h0"]);
      expect(theirs).toEqual([expect.objectContaining({ kind: "tbf", handle: "1:", root: true })]);
      expect(theirs[0].options.rate).toBe(5_000_000);

      const ours = a.rtnl.qdiscGet({ dev: "h0", parent: "root" });
      expect(ours).toMatchObject({ kind: "tbf", handle: 0x10000, parent: TC_H_ROOT, ifindex: a.rtnl.linkIndex("h0") });
      const t = ours!.tbf!;
      expect(t.bytesPerSec).toBe(5_000_000);
      expect(t.limitBytes).toBe(175_000);
      // tc derives its figure from the same kernel-held buffer, truncated to µs; ours is exact.
      expect(theirs[0].options.burst).toBe(tcBurst(t.bytesPerSec, t.bufferTicks));
      expect(t.burstBytes).toBeGreaterThanOrEqual(theirs[0].options.burst);
      expect(t.burstBytes - theirs[0].options.burst).toBeLessThanOrEqual(5);
      expect(Math.abs(t.burstBytes - 50_000)).toBeLessThanOrEqual(1);

      a.rtnl.qdiscReplace({ ...spec, bytesPerSec: 12_500_000, burstBytes: 125_000 });
      theirs = tcJson(["qdisc", "show", "dev", "h0"]);
      expect(theirs).toHaveLength(1);
      expect(theirs[0].options).toMatchObject({ rate: 12_500_000 });
      expect(a.rtnl.qdiscList("h0")).toEqual([
        expect.objectContaining({ kind: "tbf", tbf: expect.objectContaining({ bytesPerSec: 12_500_000 }) }),
      ]);
    });

    it("programs 10 GB/s through TCA_TBF_RATE64", () => {
      a.rtnl.qdiscReplace({ kind: "tbf", dev: "ifb0", bytesPerSec: 10_000_000_000, burstBytes: 1_000_000 });
      expect(tcJson(["qdisc", "show", "dev", "ifb0"])[0].options.rate).toBe(10_000_000_000);
      expect(a.rtnl.qdiscGet({ dev: "ifb0", parent: "root" })?.tbf?.bytesPerSec).toBe(10_000_000_000);
    });

    it("deletes qdiscs; a missing one, a wrong kind and a missing device are recognisable NetlinkErrors", () => {
      // A veth's default root qdisc is noqueue with handle 0: nothing to delete.
      const missing = (() => {
        try {
          a.rtnl.qdiscDel({ dev: "h0", parent: "root" });
        } catch (e) {
          return e;
        }
      })();
      expect(missing).toBeInstanceOf(NetlinkError);
      expect(missing).toMatchObject({ code: "ENOENT", op: "qdisc del dev h0 root" });
      expect(() => a.rtnl.qdiscDel({ dev: "h0", parent: "ingress" })).toThrow(/^qdisc del dev h0 ingress: .*\(ENOENT\)$/);
      expect(a.rtnl.qdiscGet({ dev: "h0", parent: "ingress" })).toBeNull();
      expect(a.rtnl.qdiscGet({ dev: "h0", parent: "root" })).toMatchObject({ kind: "noqueue", handle: 0 });

      a.rtnl.qdiscReplace({ kind: "tbf", dev: "h0", bytesPerSec: 1_000_000, burstBytes: 10_000 });
      expect(() => a.rtnl.qdiscDel({ dev: "h0", parent: "root", kind: "ingress" })).toThrow(
        expect.objectContaining({ code: "EINVAL", kernelMessage: expect.stringMatching(/match existing qdisc/) }),
      );
      expect(tcJson(["qdisc", "show", "dev", "h0"])[0].kind).toBe("tbf"); // still there
      a.rtnl.qdiscDel({ dev: "h0", parent: "root", kind: "tbf" });
      expect(tcJson(["qdisc", "show", "dev", "h0"]).map((q) => q.kind)).toEqual(["noqueue"]);

      let nodev: unknown;
      try {
        a.rtnl.qdiscDel({ dev: "nope0", parent: "root" });
      } catch (e) {
        nodev = e;
      }
      expect(isNetlinkError(nodev, "ENODEV")).toBe(true);
      expect((nodev as Error).message).toBe('qdisc del dev nope0 root: no such device "nope0" (ENODEV)');
    });
  });

  describe("filters in the kernel", () => {
    it("redirects everything entering h0 to an IFB with u32 match-all + mirred; replace is idempotent; traffic flows through the IFB", () => {
      a.rtnl.qdiscReplace({ kind: "ingress", dev: "h0" });
      a.rtnl.qdiscReplace({ kind: "ingress", dev: "h0" });
      expect(tcJson(["qdisc", "show", "dev", "h0", "ingress"])).toEqual([
        expect.objectContaining({ kind: "ingress", handle: "ffff:", parent: "ffff:fff1" }),
      ]);
      const spec: FilterSpec = {
        kind: "u32",
        dev: "h0",
        parent: "ingress",
        actions: [{ kind: "mirred", mode: "redirect", dev: "ifb0" }],
      };
      a.rtnl.filterReplace(spec);
      a.rtnl.filterReplace(spec);

      const theirs = tcJson(["filter", "show", "dev", "h0", "parent", "ffff:"]);
      const withActions = theirs.filter((f) => f.options?.actions);
      expect(withActions).toHaveLength(1);
      expect(withActions[0]).toMatchObject({
        protocol: "all",
        pref: 1,
        kind: "u32",
        options: { fh: "800::1", match: { value: "0", mask: "0" } },
      });
      expect(withActions[0].options.actions).toEqual([
        expect.objectContaining({
          kind: "mirred",
          mirred_action: "redirect",
          direction: "egress",
          to_dev: "ifb0",
          control_action: { type: "stolen" },
        }),
      ]);

      const ifb = a.rtnl.linkIndex("ifb0");
      const ours = a.rtnl.filterList("h0", "ingress").filter((f) => f.actions.length > 0);
      expect(ours).toEqual([
        {
          ifindex: a.rtnl.linkIndex("h0"),
          kind: "u32",
          parent: INGRESS_HANDLE,
          handle: U32_MATCH_ALL_HANDLE,
          prio: 1,
          protocol: ETH_P_ALL,
          actions: [{ kind: "mirred", mode: "redirect", direction: "egress", ifindex: ifb }],
        },
      ]);

      // Real packets: pings from the peer netns enter h0, leave through ifb0 and come back.
      a.rtnl.addrAdd("h0", "192.0.2.1/24");
      sh("ip", ["-n", peerNs, "addr", "add", "192.0.2.2/24", "dev", "p0"]);
      sh("ip", ["-n", peerNs, "link", "set", "p0", "up"]);
      const ifbTx = () => ipJson(["-s", "link", "show", "ifb0"], a.name)[0].stats64.tx.packets as number;
      const before = ifbTx();
      sh("ip", ["netns", "exec", peerNs, "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", "192.0.2.1"]);
      expect(ifbTx() - before).toBeGreaterThanOrEqual(3);

      a.rtnl.filterDel({ dev: "h0", parent: "ingress", prio: 1 });
      expect(tcJson(["filter", "show", "dev", "h0", "parent", "ffff:"])).toEqual([]);
      expect(() => a.rtnl.filterDel({ dev: "h0", parent: "ingress", prio: 1 })).toThrow(NetlinkError);
    });

    it("matchall: programmed and read back where the kernel has it, else refused with ENOENT (callers fall back to u32)", () => {
      a.rtnl.qdiscReplace({ kind: "ingress", dev: "h0" });
      const spec: FilterSpec = {
        kind: "matchall",
        dev: "h0",
        parent: "ingress",
        actions: [{ kind: "mirred", mode: "redirect", dev: "ifb0" }],
      };
      let err: unknown;
      try {
        a.rtnl.filterReplace(spec);
      } catch (e) {
        err = e;
      }
      if (err === undefined) {
        const theirs = tcJson(["filter", "show", "dev", "h0", "parent", "ffff:"]).filter((f) => f.options?.actions);
        expect(theirs).toEqual([expect.objectContaining({ kind: "matchall" })]);
        expect(theirs[0].options.actions[0]).toMatchObject({ kind: "mirred", to_dev: "ifb0" });
      } else {
        expect(err).toBeInstanceOf(NetlinkError);
        expect(err).toMatchObject({ code: "ENOENT", kernelMessage: expect.stringMatching(/classifier not found/i) });
        expect(tcJson(["filter", "show", "dev", "h0", "parent", "ffff:"])).toEqual([]);
      }
    });

    it("names a missing redirect target in the error", () => {
      a.rtnl.qdiscReplace({ kind: "ingress", dev: "h0" });
      expect(() =>
        a.rtnl.filterReplace({
          kind: "u32",
          dev: "h0",
          parent: "ingress",
          actions: [{ kind: "mirred", mode: "redirect", dev: "gone0" }],
        }),
      ).toThrow('filter replace dev h0 parent ffff: prio 1 u32: no such device "gone0" (ENODEV)');
    });
  });
});
